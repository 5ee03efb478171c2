"""Data erase in QEMU, from a request in the running OS to a fresh OS, on both firmwares:

- SeaBIOS, one AHCI disk that holds RECOVERY: PRIMARY and DATA are erased as partitions; the
  customer's secret (on DATA and PRIMARY) is found nowhere on the disk afterwards, RECOVERY
  still holds its image and the certificate, the server has the certificate, and the next
  boots restore and start a fresh OS with an empty DATA. The same unit's erase is then cut
  at seeded moments (`tests/recovery/power_cut.py`; `KILN_POWER_CUTS`, `KILN_POWER_CUT_SEED`):
  every case converges to the fresh OS with the secret gone and every certificate at the
  server; the run's summary ("reports") says "erase power cuts: tried N, converged N (seed S)".
- OVMF, RECOVERY on its own disk and PRIMARY/DATA on an NVMe disk that fails every
  write-zeroes (QEMU's Format NVM writes zeroes): the format fails and leaves the namespace
  unusable; erase falls back to each next method and says so, and ends failed — certificate
  `failed` at the server, the request kept for the next boot, a 30 s back-off.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
from lab.profile import GIB, MIB, LabUnit, lab_manufdata
from lab.spec import (
    BootDevice,
    DirectKernel,
    Disk,
    DiskInterface,
    Firmware,
    Nic,
    RejectedOperation,
    Smbios,
    VmSpec,
)
from tests.provision.qemu_factory import (
    QEMU_COMMANDS,
    Factory,
    blank_disk,
    manufacture_direct,
    partition_table,
    placed,
    recovery_on_its_own_disk,
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
from tests.recovery.testos import INIT_START, BootPair, make_os_image, versioned_ramdisk
from tests.workers import report

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]

OS_MARK = "KILN-ERASE-OS:"
# The test OS: on a boot that finds DATA empty and no erase done yet it leaves a secret on
# DATA and on PRIMARY (printed, so the test knows what to look for) and asks for an erase,
# as `kiln request erase --yes` would.
ERASE_OS_INIT = INIT_START + f"""secret=$($b cat /run/data/secret.txt 2>/dev/null || $b echo none)
$b echo "{OS_MARK} version $($b cat /etc/version) secret $secret"
if [ "$secret" = none ] && [ -z "$($b ls /run/recovery/certificates 2>/dev/null)" ]; then
    secret="kiln-secret-$($b cat /proc/sys/kernel/random/uuid)"
    $b echo "$secret" > /run/data/secret.txt
    $b mount -o remount,rw /
    $b echo "$secret" > /secret.txt
    $b mkdir -p /run/recovery/requests
    $b echo '{{"reason": "test OS"}}' > /run/recovery/requests/erase.json
    $b echo "{OS_MARK} wrote $secret"
fi
$b sync
$b umount /run/data /run/recovery
$b mount -o remount,ro /
$b poweroff -f
"""


WROTE = OS_MARK + r" wrote [^\r\n]*"
VERSION = OS_MARK + r" version [^\r\n]*"
RESTORED = r"kiln: restore (succeeded|failed): [^\r\n]*"
ERASED = r"kiln: erase (succeeded|failed): [^\r\n]*"
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


def _boot(lab: Lab, spec: VmSpec, work: Path, *, name: str, until: str) -> tuple[str, str, str]:
    """Boot once; (the ramdisk's decision, the line `until` matched, the console)."""
    with lab.vm(spec) as vm:
        decision = vm.wait_for(r"kiln: decision: ([a-z]+)", timeout=300)
        found = vm.wait_for(until, timeout=900)
        vm.wait_exit(timeout=300)
        console = vm.console_text()
    (work / f"{name}.txt").write_text(console)
    assert "Kernel panic" not in console and "Traceback" not in console
    return decision.group(1), found.group(0), console


def _contains(disk: Path, needle: bytes) -> bool:
    """Whether `needle` is anywhere in a raw disk image (holes skipped)."""
    chunk = 16 * MIB
    fd = os.open(disk, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                return False
            end = os.lseek(fd, offset, os.SEEK_HOLE)
            while offset < end:
                block = os.pread(fd, min(chunk, end - offset) + len(needle), offset)
                if needle in block:
                    return True
                offset += chunk
    finally:
        os.close(fd)
    return False


def _certificates(factory: Factory, serial: str) -> list[dict[str, Any]]:
    found = factory.api(f"units/{serial}/erase-certificates")
    return list(found["certificates"] if isinstance(found, dict) else found)


def _os_image(tmp_path: Path, signing_key: SigningKey, version: str, *,
              boot_files: BootPair | None = None) -> Path:
    return make_os_image(tmp_path, signing_key, version, init=ERASE_OS_INIT,
                         boot_files=boot_files)


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
    image = _os_image(work, signing_key, "4.0.0")
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
    decision, line, _ = _boot(lab, unit.spec(pristine, ramdisk), work, name="restore",
                              until=RESTORED)
    assert (decision, "restore succeeded" in line) == ("restore", True), line
    decision, line, _ = _boot(lab, unit.spec(pristine, ramdisk), work, name="normal",
                              until=WROTE)
    assert decision == "normal"
    secret = re.search(r"kiln-secret-[0-9a-f-]+", line)
    assert secret is not None, line
    assert _contains(pristine, secret.group(0).encode())  # the search can find it

    erased = copy_sparse(pristine, work / "erased.img")
    decision, line, console = _boot(lab, unit.spec(erased, ramdisk), work, name="erase",
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
    assert not _contains(disk, unit.secret)  # not on DATA, not on PRIMARY

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
    at_server = {c["run_id"] for c in _certificates(factory, AHCI_SERIAL)}
    assert on_disk["run_id"] in at_server
    assert "erase.json" not in ext4_listing(disk, rec, "/requests", work=work)

    fresh = copy_sparse(disk, tmp_path / "fresh.img")
    decision, line, _ = _boot(lab, unit.spec(fresh, ramdisk), tmp_path, name="fresh-restore",
                              until=RESTORED)
    assert (decision, "restore succeeded: demo 4.0.0" in line) == ("restore", True), line
    decision, line, _ = _boot(lab, unit.spec(fresh, ramdisk), tmp_path, name="fresh",
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
    assert not _contains(disk, unit.secret)
    work = tmp_path / "final"
    work.mkdir()
    final = Ext4Copy.of(disk, rec, work=work)
    assert not final.exists("/state/erase-journal.json")
    assert not final.exists("/requests/erase.json")
    assert len(stored_images(disk, rec, work=work)) == 1
    certificates = _certificates_on(disk, work)
    assert certificates and certificates[-1]["result"] == "erased", certificates
    if journal is not None and requested:  # the cut run had begun: the next one names it
        assert journal["run_id"] in certificates[-1]["interrupted_runs"], certificates[-1]
    at_server = {c["run_id"] for c in _certificates(factory, AHCI_SERIAL)}
    assert all(c["sent"] and c["run_id"] in at_server for c in certificates), certificates

    unit.tally.converged += 1
    unit.tally.notes.append(
        f"{point.describe()}, {cut.late * 1000:.0f} ms late: request "
        f"{'kept' if requested else 'cleared'}, journal {'written' if journal else 'none'}, "
        f"{len(boots)} boot(s) to converge; last line: {cut.last_line[:90]}")


def _two_disks(factory: Factory, image: Path, image_id: str,
               ramdisk: RamdiskBuild) -> dict[str, Any]:
    return recovery_on_its_own_disk(lab_manufdata(
        image=image, image_id=image_id, kernel=ramdisk.kernel, initrd=ramdisk.initrd,
        unit=LabUnit(data_bytes=256 * MIB)))


def test_an_nvme_disk_that_fails_the_format_fails_the_erase_safely_on_ovmf(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
        tmp_path: Path) -> None:
    # The image carries a newer Kiln ramdisk: the first restore puts it on the ESP and
    # switches GRUB and the NVRAM entries to it.
    newer = BootPair(kernel=ramdisk.kernel, initrd=versioned_ramdisk(
        ramdisk.initrd, "7.1", tmp_path / "initrd-7.1.zst"), version="7.1")
    image = _os_image(tmp_path, signing_key, "4.1.0", boot_files=newer)
    image_id = factory.server.push_image(factory.token, image)
    mfgurl = factory.profile("line-nvme-erase", _two_disks(factory, image, image_id, ramdisk))
    serial = "KILN-ERASE-0002"
    nvme, recovery = tmp_path / "nvme.img", tmp_path / "recovery.img"
    blank_disk(nvme)
    blank_disk(recovery, GIB)
    efi_vars = tmp_path / "unit.vars"
    disks = (Disk(image=nvme, interface=DiskInterface.NVME, serial="KILNNVME0002",
                  rejects=(RejectedOperation.WRITE_ZEROES,)),
             Disk(image=recovery))
    manufacture = VmSpec(firmware=Firmware.UEFI, efi_vars=efi_vars, disks=disks,
                         boot=DirectKernel(kernel=ramdisk.kernel, initrd=ramdisk.initrd,
                                           append=f"console=ttyS0 mfgurl={mfgurl}"),
                         nics=(Nic(),), memory_mb=1024, no_reboot=True,
                         smbios=Smbios(serial=serial))
    decision, line, _ = _boot(lab, manufacture, tmp_path, name="manufacture",
                              until=r"kiln: manufacture (succeeded|failed)[^\r\n]*")
    assert "manufacture succeeded" in line, line
    spec = VmSpec(firmware=Firmware.UEFI, efi_vars=efi_vars, boot=BootDevice.DISK,
                  disks=disks, memory_mb=1024, no_reboot=True, nics=(Nic(),))
    restored = r"kiln: restore (succeeded|failed): [^\r\n]*"
    decision, line, console = _boot(lab, spec, tmp_path, name="restore", until=restored)
    assert (decision, "restore succeeded" in line) == ("restore", True), line
    assert re.search(r"restore: boot files: Kiln boot files from the factory → 7\.1 \(.*\) "
                     r"in /kiln for uefi; NVRAM entries switched", console), console
    decision, line, console = _boot(lab, spec, tmp_path, name="normal", until=WROTE)
    assert decision == "normal"
    assert "kiln: Kiln ramdisk 7.1 started" in console  # the firmware booted the new pair

    decision, line, console = _boot(lab, spec, tmp_path, name="erase",
                                    until=r"kiln: erase (succeeded|failed): [^\r\n]*")
    assert decision == "erase"
    # QEMU fails the format (its write-zeroes are rejected) and leaves the namespace in
    # "format in progress": every later command fails too, as a device broken by a failed
    # command would. Each method is tried and said to fail; the erase ends failed, with a
    # certificate that says so, the request kept and a back-off, never a claim of success.
    for method in ("nvme-format-user-data", "discard"):
        assert re.search(rf"disk nvme0n1: {method} failed \(.*?\); falling back", console,
                         re.DOTALL), method  # the tool's stderr makes it several lines
    assert "erase failed: not every region was erased and verified: disk nvme0n1: not " \
           "erased; rebooting in 30 s" in line, line
    [certificate] = _certificates(factory, serial)
    document = certificate["document"]
    assert document["result"] == "failed"
    [device] = document["devices"]
    assert (device["scope"], device["method"], device["serial"], device["verification"]) == (
        "device", None, "KILNNVME0002", "failed")
    assert [(a["method"], a["result"]) for a in device["attempts"]] == [
        ("nvme-format-user-data", "failed"), ("discard", "failed"), ("overwrite", "failed")]
    assert "Internal Error" in device["attempts"][0]["detail"]
    work = tmp_path / "check"
    work.mkdir()
    rec = placed(partition_table(recovery), 1, "RECOVERY")
    assert "erase.json" in ext4_listing(recovery, rec, "/requests", work=work)  # tried again
