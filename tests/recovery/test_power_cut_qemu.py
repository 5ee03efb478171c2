"""Power loss during factory restore, in QEMU (issue #6).

One unit is manufactured with the test OS as its image, restores, boots the OS once (which
leaves a file on DATA and requests a restore that keeps DATA) and is kept as the pristine
disk. Each case copies it, boots the requested restore and cuts the power at a seeded
moment (`tests/recovery/power_cut.py`: round the restore's windows — before the attempt,
format, write and configure, the records, the flag, the close — each at a random delay within
the window as the first restore measured it), reads from the host how far the restore got,
then boots again without cuts until the OS runs. Every case must converge: the restore
succeeds, the OS boots with the expected version, identity and DATA, the journal and the
request are gone, and the image history counts the cut attempt as interrupted exactly when
the cut left it open (a cut before the attempt began does not count).

`KILN_POWER_CUTS` (default 6) and `KILN_POWER_CUT_SEED` choose the cases; the run's summary
(its "reports" section) ends with "restore power cuts: tried N, converged N (seed S)".
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from initramfs.builder import RamdiskBuild
from kiln.image.signing import SigningKey
from kiln.process import CommandError
from lab import Lab
from lab.diskimage import Ext4Copy, PlacedPartition, copy_sparse
from lab.kernel import extract_vmlinux
from lab.profile import MIB, LabUnit, lab_manufdata
from lab.spec import BootDevice, DirectKernel, Disk, Firmware, VmSpec
from recovery.history import ImageRecord
from tests.provision.qemu_factory import (
    QEMU_COMMANDS,
    Factory,
    blank_disk,
    manufacture_direct,
    partition_table,
    placed,
)
from tests.recovery.power_cut import (
    CutPoint,
    CutSettings,
    Milestone,
    Tally,
    Window,
    boot_until_settled,
    cut_at,
    draw_cuts,
    measure_windows,
)
from tests.recovery.testos import OS_MARK, make_os_image
from tests.workers import report

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]

SETTINGS = CutSettings.from_env()
SERIAL = "KILN-CUT-0001"
VERSION = "3.1.0"
OS_LINE = OS_MARK + r"[^\r\n]*"
# The restore's console lines that open each window (the last one only closes one).
RESTORE_MILESTONES = (
    Milestone(name="before the attempt", pattern=r"kiln: decision: restore"),
    Milestone(name="format", pattern=r"kiln: restore: .* onto /dev/"),
    Milestone(name="write and configure", pattern=r"kiln: \+ mount -t ext4 .*/run/kiln/primary"),
    Milestone(name="records", pattern=r"kiln: restore: configured: "),
    Milestone(name="flag", pattern=r"kiln: restore: .* recorded as installed; "),
    Milestone(name="close", pattern=r"kiln: \+ umount /run/kiln/primary"),
    Milestone(name="end", pattern=r"kiln: restore succeeded: "),
)


class Landed(enum.IntEnum):
    """How far the cut restore got, as RECOVERY and PRIMARY show it afterwards."""

    BEFORE_ATTEMPT = 0  # the history has no new attempt
    ATTEMPT_OPEN = 1  # an attempt is open, no journal yet
    FORMAT = 2  # the journal's phases
    WRITE = 3
    CONFIGURE = 4
    CLOSED = 5  # the attempt is recorded as succeeded; PRIMARY's flag may not be written yet


# What the console of the cut run shows was reached, and so must be on the disk: every
# step before these lines was written durably before the line was printed.
REACHED_ON_CONSOLE = (
    (r"kiln: \+ wipefs ", Landed.FORMAT),
    (r"kiln: \+ mount -t ext4 .*/run/kiln/primary", Landed.WRITE),
    (r"kiln: restore: configured: ", Landed.CONFIGURE),
    (r"kiln: restore: .* recorded as installed; ", Landed.CLOSED),
)


def disk_spec(disk: Path) -> VmSpec:
    """The unit as it boots in the field: SeaBIOS, GRUB on RECOVERY, its kernel and ramdisk."""
    return VmSpec(firmware=Firmware.BIOS, boot=BootDevice.DISK, disks=(Disk(image=disk),),
                  memory_mb=1024, no_reboot=True)


def direct_spec(disk: Path, *, vmlinux: Path, ramdisk: RamdiskBuild) -> VmSpec:
    """The same kernel, ramdisk and command line as GRUB's normal entry, from the host: half
    the boot time under TCG (no firmware disk reads, no kernel decompression in the guest)."""
    return VmSpec(boot=DirectKernel(kernel=vmlinux, initrd=ramdisk.initrd,
                                    append="console=ttyS0"),
                  disks=(Disk(image=disk),), memory_mb=1024, no_reboot=True)


@dataclass(frozen=True, kw_only=True)
class UnitState:
    """A unit's restore state, read from its disk on the host."""

    record: ImageRecord
    journal_phase: str | None
    requested: bool
    flag: bool | None  # PRIMARY carries /boot.normal (None: no readable file system)

    def landed(self, baseline: ImageRecord) -> Landed:
        if self.record.attempts == baseline.attempts:
            assert not self.record.in_progress
            return Landed.BEFORE_ATTEMPT
        if not self.record.in_progress:
            return Landed.CLOSED
        if self.journal_phase is None:
            return Landed.ATTEMPT_OPEN
        return Landed[self.journal_phase.upper()]


@dataclass(frozen=True, kw_only=True)
class Manufactured:
    pristine: Path
    recovery: PlacedPartition
    primary: PlacedPartition
    image_id: str
    baseline: ImageRecord
    machine_id: str
    vmlinux: Path
    windows: tuple[Window, ...]
    schedule: tuple[CutPoint, ...]
    tally: Tally

    def state(self, disk: Path, *, work: Path, primary: bool) -> UnitState:
        work.mkdir(parents=True, exist_ok=True)
        rec = Ext4Copy.of(disk, self.recovery, work=work)
        history = json.loads(rec.read("/state/image-history.json"))
        journal = (json.loads(rec.read("/state/restore-journal.json"))
                   if rec.exists("/state/restore-journal.json") else None)
        flag = None
        if primary:
            try:
                flag = Ext4Copy.of(disk, self.primary, work=work).exists("/boot.normal")
            except CommandError:
                flag = None  # cut while PRIMARY's file system was being made
        return UnitState(record=ImageRecord.from_json(history["images"][self.image_id]),
                         journal_phase=journal["phase"] if journal else None,
                         requested=rec.exists("/requests/restore.json"), flag=flag)


def reached_on_console(console: str) -> Landed:
    reached = Landed.BEFORE_ATTEMPT
    for pattern, landed in REACHED_ON_CONSOLE:
        if re.search(pattern, console):
            reached = max(reached, landed)
    return reached


@pytest.fixture(scope="module")
def unit(*, lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manufactured]:
    """The unit every case starts from: manufactured, restored, its OS booted once (a file
    on DATA, a restore requested)."""
    work = tmp_path_factory.mktemp("power-cut")
    image = make_os_image(work, signing_key, VERSION)
    image_id = factory.server.push_image(factory.token, image)
    mfgurl = factory.profile("line-cut", lab_manufdata(
        image=image, image_id=image_id, kernel=ramdisk.kernel, initrd=ramdisk.initrd,
        unit=LabUnit(data_bytes=256 * MIB)))
    disk = work / "pristine.img"
    blank_disk(disk)
    made = manufacture_direct(lab, ramdisk, work, mfgurl=mfgurl, serial=SERIAL,
                              disks=(Disk(image=disk),), name="manufacture")
    assert made.result == "succeeded", made.line
    vmlinux = extract_vmlinux(ramdisk.kernel, work / "vmlinux")
    first = boot_until_settled(lab, [direct_spec(disk, vmlinux=vmlinux, ramdisk=ramdisk)],
                               settled=OS_LINE, work=work, name="first", max_boots=2)
    assert [boot.decision for boot in first] == ["restore", "normal"], first
    assert "restore succeeded" in first[0].outcome, first[0].outcome
    assert f" version {VERSION} host {SERIAL.lower()} data none id " in first[1].outcome
    windows = measure_windows(first[0].console, RESTORE_MILESTONES)

    table = partition_table(disk)
    recovery, primary = placed(table, 0, "RECOVERY"), placed(table, 1, "PRIMARY")
    history = json.loads(Ext4Copy.of(disk, recovery, work=work).read(
        "/state/image-history.json"))
    (stored_id,) = history["images"]
    found = Manufactured(pristine=disk, recovery=recovery, primary=primary, image_id=stored_id,
                         baseline=ImageRecord(), machine_id=first[1].outcome.split(" id ")[1],
                         vmlinux=vmlinux, windows=windows, schedule=draw_cuts(SETTINGS, windows),
                         tally=Tally(settings=SETTINGS))
    state = found.state(disk, work=work / "pristine", primary=False)
    assert state.requested and state.journal_phase is None and not state.record.in_progress
    found = dataclasses.replace(found, baseline=state.record)
    yield found
    report(tmp_path_factory, [
        f"restore power cuts: seed {SETTINGS.seed}, {SETTINGS.count} cut(s); windows: "
        + ", ".join(f"{w.name} {w.seconds * 1000:.0f} ms" for w in windows),
        *found.tally.notes, f"restore {found.tally.summary()}"])


@pytest.mark.parametrize("index", range(SETTINGS.count))
def test_a_power_cut_during_restore_converges(index: int, unit: Manufactured, lab: Lab,
                                              ramdisk: RamdiskBuild, tmp_path: Path) -> None:
    point = unit.schedule[index]
    unit.tally.tried += 1
    disk = copy_sparse(unit.pristine, tmp_path / "unit.img")
    spec = direct_spec(disk, vmlinux=unit.vmlinux, ramdisk=ramdisk)
    # Every fourth case boots from the disk right after its cut: GRUB must read RECOVERY
    # with the cut's journal not yet replayed (the others boot directly, for CI's budget).
    after_cut = [disk_spec(disk), spec] if index % 4 == 0 else [spec]
    with lab.vm(spec) as vm:
        cut = cut_at(vm, point, start=r"kiln: decision: restore")
    (tmp_path / "cut.txt").write_text(cut.console)
    assert cut.running, f"{point.describe()}: the run ended before the cut"

    after = unit.state(disk, work=tmp_path / "after-cut", primary=True)
    landed = after.landed(unit.baseline)
    reached = reached_on_console(cut.console)
    assert landed >= reached, (f"{point.describe()}: the console showed {reached.name}, "
                               f"the disk only {landed.name}: {after}")
    if not after.requested:  # the request goes last: the restore was complete
        assert landed is Landed.CLOSED, after

    boots = boot_until_settled(lab, after_cut, settled=OS_LINE, work=tmp_path,
                               name="converge", max_boots=3)
    restores = [boot for boot in boots if boot.decision == "restore"]
    # A request left, or no flag on PRIMARY (the cut came before it): one more restore.
    expected = ["restore"] if after.requested or not after.flag else []
    assert [boot.decision for boot in boots] == [*expected, "normal"], boots
    for boot in restores:
        assert f"restore succeeded: demo {VERSION} " in boot.outcome, boot.outcome
    assert (f" pid 1 version {VERSION} host {SERIAL.lower()} data keep me "
            f"id {unit.machine_id}") in boots[-1].outcome, boots[-1].outcome

    final = unit.state(disk, work=tmp_path / "final", primary=False)
    assert final.journal_phase is None and not final.requested, final
    begun, record, cut_record = unit.baseline, final.record, after.record
    interrupted = 1 if cut_record.in_progress else 0  # left open by the cut
    assert not record.in_progress
    assert record.interrupted == begun.interrupted + interrupted, (landed.name, record)
    assert record.failures == begun.failures + interrupted, record  # nothing failed outright
    assert record.attempts == cut_record.attempts + len(restores), record
    assert record.successes == cut_record.successes + len(restores), record
    assert record.attempts == record.successes + record.failures, record
    if landed is Landed.BEFORE_ATTEMPT:
        assert record.interrupted == begun.interrupted  # a cut before the attempt: no count

    unit.tally.converged += 1
    unit.tally.notes.append(
        f"{point.describe()}, {cut.late * 1000:.0f} ms late: landed {landed.name.lower()} "
        f"(console: {reached.name.lower()}), interrupted +{interrupted}, "
        f"{len(boots)} boot(s) to converge; last line: {cut.last_line[:90]}")
