"""Data erase in QEMU on SeaBIOS, one AHCI disk that holds RECOVERY (OVMF and NVMe:
test_erase_nvme_qemu.py).

PRIMARY and DATA are erased as partitions; the customer's secret (on DATA and PRIMARY) is
found nowhere on the disk afterwards, RECOVERY still holds its image and the certificate,
the server has the certificate, and the next boots restore and start a fresh OS with an
empty DATA. The same unit's erase is then cut at seeded moments
(`tests/recovery/power_cut.py`; `KILN_POWER_CUTS`, `KILN_POWER_CUT_SEED`): every case
converges to the fresh OS with the secret gone and every certificate at the server; the
run's summary ("reports") says "erase power cuts: tried N, converged N (seed S)".
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initramfs.builder import RamdiskBuild
from kiln.image.signing import SigningKey
from lab import Lab
from lab.diskimage import Ext4Copy, copy_sparse, ext4_listing, ext4_read
from lab.kernel import extract_vmlinux
from lab.profile import MIB, LabUnit, lab_manufdata
from lab.spec import (
    DirectKernel,
    Disk,
    DiskInterface,
    Nic,
    VmSpec,
)
from tests.erase.eraseos import (
    ERASED,
    RESTORED,
    VERSION,
    WROTE,
    boot_once,
    certificates,
    contains,
    erase_os_image,
)
from tests.provision.qemu_factory import (
    QEMU_COMMANDS,
    Factory,
    blank_disk,
    manufacture_direct,
    partition_table,
    placed,
    stored_images,
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
from tests.workers import report

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]

AHCI_SERIAL = "KILN-ERASE-0001"
CUTS = CutSettings.from_env()
# The erase's console lines that open each window (the last one only closes one).
ERASE_MILESTONES = (
    Milestone(name="before the journal", pattern=r"kiln: decision: erase"),
    Milestone(name="PRIMARY", pattern=r"kiln: erase: PRIMARY \("),
    Milestone(name="DATA", pattern=r"kiln: erase: DATA \("),
    Milestone(name="put back", pattern=r"kiln: erase: DATA: erased with "),
    Milestone(name="certificate", pattern=r"kiln: erase: /dev/\S+: a fresh, empty DATA"),
    Milestone(name="send", pattern=r"kiln: erase: certificate erase-"),
    Milestone(name="end", pattern=r"kiln: erase: sent "),
)


@dataclass(frozen=True, kw_only=True)
class ErasedUnit:
    """The SeaBIOS/AHCI unit every erase case starts from, and its one uncut erase."""

    pristine: Path  # after the OS's first boot: a secret on DATA and PRIMARY, erase requested
    secret: bytes
    vmlinux: Path
    erased: Path  # a copy of `pristine` after the uncut erase
    erase_console: str
    erase_line: str
    windows: tuple[Window, ...]
    schedule: tuple[CutPoint, ...]
    tally: Tally

    def spec(self, disk: Path, ramdisk: RamdiskBuild) -> VmSpec:
        """The unit booted the fast way: GRUB's kernel, ramdisk and console from the host
        (GRUB on SeaBIOS is what tests/recovery/test_restore_qemu.py boots)."""
        return VmSpec(boot=DirectKernel(kernel=self.vmlinux, initrd=ramdisk.initrd,
                                        append="console=ttyS0"),
                      disks=(Disk(image=disk, interface=DiskInterface.AHCI),), nics=(Nic(),),
                      memory_mb=1024, no_reboot=True)


@pytest.fixture(scope="module")
def ahci_unit(*, lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErasedUnit]:
    """Manufactured with RECOVERY, PRIMARY and DATA on one AHCI disk, restored, its OS booted
    once (a secret written, an erase requested): kept as the pristine disk; then erased once
    without a cut (the lifecycle's erase, and the windows for the cuts)."""
    work = tmp_path_factory.mktemp("erase-ahci")
    image = erase_os_image(work, signing_key, "4.0.0")
    image_id = factory.server.push_image(factory.token, image)
    mfgurl = factory.profile("line-erase", lab_manufdata(
        image=image, image_id=image_id, kernel=ramdisk.kernel, initrd=ramdisk.initrd,
        unit=LabUnit(data_bytes=256 * MIB)))
    pristine = work / "pristine.img"
    blank_disk(pristine)
    made = manufacture_direct(lab, ramdisk, work, mfgurl=mfgurl, serial=AHCI_SERIAL,
                              disks=(Disk(image=pristine, interface=DiskInterface.AHCI),),
                              name="manufacture")
    assert made.result == "succeeded", made.line
    vmlinux = extract_vmlinux(ramdisk.kernel, work / "vmlinux")
    unit = ErasedUnit(pristine=pristine, secret=b"", vmlinux=vmlinux, erased=pristine,
                      erase_console="", erase_line="", windows=(), schedule=(),
                      tally=Tally(settings=CUTS))
    decision, line, _ = boot_once(lab, unit.spec(pristine, ramdisk), work, name="restore",
                              until=RESTORED)
    assert (decision, "restore succeeded" in line) == ("restore", True), line
    decision, line, _ = boot_once(lab, unit.spec(pristine, ramdisk), work, name="normal",
                              until=WROTE)
    assert decision == "normal"
    secret = re.search(r"kiln-secret-[0-9a-f-]+", line)
    assert secret is not None, line
    assert contains(pristine, secret.group(0).encode())  # the search can find it

    erased = copy_sparse(pristine, work / "erased.img")
    decision, line, console = boot_once(lab, unit.spec(erased, ramdisk), work, name="erase",
                                    until=ERASED)
    assert decision == "erase"
    windows = measure_windows(console, ERASE_MILESTONES)
    unit = dataclasses.replace(unit, secret=secret.group(0).encode(), erased=erased,
                               erase_console=console, erase_line=line, windows=windows,
                               schedule=draw_cuts(CUTS, windows))
    yield unit
    report(tmp_path_factory, [
        f"erase power cuts: seed {CUTS.seed}, {CUTS.count} cut(s); windows: "
        + ", ".join(f"{w.name} {w.seconds * 1000:.0f} ms" for w in windows),
        *unit.tally.notes, f"erase {unit.tally.summary()}"])


def _certificates_on(disk: Path, work: Path) -> list[dict[str, Any]]:
    """The erase certificates on the disk's RECOVERY, oldest first, each with `sent`."""
    rec = placed(partition_table(disk), 0, "RECOVERY")
    names = ext4_listing(disk, rec, "/certificates", work=work)
    found = []
    for name in sorted(n for n in names if n.endswith(".json")):
        document = json.loads(ext4_read(disk, rec, f"/certificates/{name}", work=work))
        found.append({**document, "sent": name.replace(".json", ".sent") in names})
    return sorted(found, key=lambda d: str(d["started"]))


def test_erase_on_the_recovery_disk_then_a_fresh_os(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, ahci_unit: ErasedUnit,
        tmp_path: Path) -> None:
    unit, disk = ahci_unit, ahci_unit.erased
    assert "erase succeeded: PRIMARY: discard; DATA: discard" in unit.erase_line, unit.erase_line
    assert "passed over: device-level methods: this disk holds RECOVERY" in unit.erase_console
    assert not contains(disk, unit.secret)  # not on DATA, not on PRIMARY

    table = partition_table(disk)
    rec = placed(table, 0, "RECOVERY")
    work = tmp_path / "check"
    work.mkdir()
    assert len(stored_images(disk, rec, work=work)) == 1  # RECOVERY intact
    [on_disk] = _certificates_on(disk, work)
    assert on_disk["result"] == "erased" and on_disk["serial"] == AHCI_SERIAL
    assert on_disk["sent"] and on_disk["interrupted_runs"] == []
    assert {d["target"]: d["verification"] for d in on_disk["devices"]} == {
        "PRIMARY": "passed", "DATA": "passed"}
    for device in on_disk["devices"]:  # "12 of 12 gone"
        gone, _, written, _ = device["canaries"].split()
        assert gone == written and int(written) >= 8, device
    assert all(d["transport"] == "sata" for d in on_disk["devices"])
    at_server = {c["run_id"] for c in certificates(factory, AHCI_SERIAL)}
    assert on_disk["run_id"] in at_server
    assert "erase.json" not in ext4_listing(disk, rec, "/requests", work=work)

    fresh = copy_sparse(disk, tmp_path / "fresh.img")
    decision, line, _ = boot_once(lab, unit.spec(fresh, ramdisk), tmp_path, name="fresh-restore",
                              until=RESTORED)
    assert (decision, "restore succeeded: demo 4.0.0" in line) == ("restore", True), line
    decision, line, _ = boot_once(lab, unit.spec(fresh, ramdisk), tmp_path, name="fresh",
                              until=VERSION)
    assert decision == "normal"
    assert line.endswith("version 4.0.0 secret none"), line  # a fresh OS, an empty DATA


@pytest.mark.parametrize("index", range(CUTS.count))
def test_a_power_cut_during_erase_converges(*, index: int, ahci_unit: ErasedUnit, lab: Lab,
                                            ramdisk: RamdiskBuild, factory: Factory,
                                            tmp_path: Path) -> None:
    """Cut at a seeded moment of the erase, then boot until the fresh OS runs: the erase is
    done again when the cut left its request, the secret is gone, RECOVERY keeps its image,
    the last certificate says erased and names the cut run when it had begun, and every
    certificate reaches the server (after the restore, when the cut came while sending)."""
    unit = ahci_unit
    point = unit.schedule[index]
    unit.tally.tried += 1
    disk = copy_sparse(unit.pristine, tmp_path / "unit.img")
    spec = unit.spec(disk, ramdisk)
    with lab.vm(spec) as vm:
        cut = cut_at(vm, point, start=r"kiln: decision: erase")
    (tmp_path / "cut.txt").write_text(cut.console)
    assert cut.running, f"{point.describe()}: the run ended before the cut"
    rec = placed(partition_table(disk), 0, "RECOVERY")
    (tmp_path / "after-cut").mkdir()
    after = Ext4Copy.of(disk, rec, work=tmp_path / "after-cut")
    requested = after.exists("/requests/erase.json")
    journal = json.loads(after.read("/state/erase-journal.json")) \
        if after.exists("/state/erase-journal.json") else None

    boots = boot_until_settled(lab, [spec], settled=VERSION, work=tmp_path, name="converge",
                               max_boots=4)
    expected = ["erase", "restore", "normal"] if requested else ["restore", "normal"]
    assert [boot.decision for boot in boots] == expected, boots
    assert boots[-1].outcome.endswith("version 4.0.0 secret none"), boots[-1].outcome
    assert not contains(disk, unit.secret)
    work = tmp_path / "final"
    work.mkdir()
    final = Ext4Copy.of(disk, rec, work=work)
    assert not final.exists("/state/erase-journal.json")
    assert not final.exists("/requests/erase.json")
    assert len(stored_images(disk, rec, work=work)) == 1
    on_disk = _certificates_on(disk, work)
    assert on_disk and on_disk[-1]["result"] == "erased", on_disk
    if journal is not None and requested:  # the cut run had begun: the next one names it
        assert journal["run_id"] in on_disk[-1]["interrupted_runs"], on_disk[-1]
    at_server = {c["run_id"] for c in certificates(factory, AHCI_SERIAL)}
    assert all(c["sent"] and c["run_id"] in at_server for c in on_disk), on_disk

    unit.tally.converged += 1
    unit.tally.notes.append(
        f"{point.describe()}, {cut.late * 1000:.0f} ms late: request "
        f"{'kept' if requested else 'cleared'}, journal {'written' if journal else 'none'}, "
        f"{len(boots)} boot(s) to converge; last line: {cut.last_line[:90]}")
