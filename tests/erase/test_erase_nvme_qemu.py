"""Data erase in QEMU on OVMF, RECOVERY (and the ESP) on its own disk, PRIMARY and DATA on an
NVMe disk that is erased whole:

- the lifecycle: manufacture, a restore that installs the image's newer Kiln ramdisk, the
  OS (a secret, a restore request), the restore (DATA kept), the OS (an erase request), the
  erase (NVMe format, canaries verified, the planned
  partition table and an empty DATA put back), a fresh restore and a fresh OS;
- an NVMe disk that fails every write-zeroes (QEMU's Format NVM writes zeroes): the format
  fails and leaves the namespace unusable; erase falls back to each next method and says so,
  and ends failed — certificate `failed` at the server, the request kept for the next boot,
  a 30 s back-off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from initramfs.builder import RamdiskBuild
from kiln.image.signing import SigningKey
from lab import Lab
from lab.diskimage import ext4_listing
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
from tests.erase.eraseos import (
    ERASED,
    KEPT,
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
    partition_table,
    placed,
    recovery_on_its_own_disk,
)
from tests.recovery.testos import BootPair, versioned_ramdisk

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]


@dataclass(frozen=True, kw_only=True)
class OvmfUnit:
    """A unit on OVMF after manufacture, the first restore and the OS's first boot (a secret
    on DATA and PRIMARY, an erase requested)."""

    spec: VmSpec  # booting its disks through the firmware, NVRAM kept
    nvme: Path
    recovery: Path
    serial: str
    secret: bytes
    restore_console: str
    normal_console: str


def _ovmf_unit(*, lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
               work: Path, serial: str, rejects: tuple[RejectedOperation, ...],
               boot_files: BootPair | None, restore_first: bool = False) -> OvmfUnit:
    """`restore_first`: the OS asks for a restore (DATA kept) before it asks for the erase."""
    image = erase_os_image(work, signing_key, "4.1.0", boot_files=boot_files,
                           restore_first=restore_first)
    image_id = factory.server.push_image(factory.token, image)
    mfgurl = factory.profile(f"line-{serial.lower()}", recovery_on_its_own_disk(lab_manufdata(
        image=image, image_id=image_id, kernel=ramdisk.kernel, initrd=ramdisk.initrd,
        unit=LabUnit(data_bytes=256 * MIB))))
    nvme, recovery = work / "nvme.img", work / "recovery.img"
    blank_disk(nvme)
    blank_disk(recovery, GIB)
    efi_vars = work / "unit.vars"
    disks = (Disk(image=nvme, interface=DiskInterface.NVME, serial=f"NVME{serial[-4:]}",
                  rejects=rejects),
             Disk(image=recovery))
    manufacture = VmSpec(firmware=Firmware.UEFI, efi_vars=efi_vars, disks=disks,
                         boot=DirectKernel(kernel=ramdisk.kernel, initrd=ramdisk.initrd,
                                           append=f"console=ttyS0 mfgurl={mfgurl}"),
                         nics=(Nic(),), memory_mb=1024, no_reboot=True,
                         smbios=Smbios(serial=serial))
    _, line, _ = boot_once(lab, manufacture, work, name="manufacture",
                           until=r"kiln: manufacture (succeeded|failed)[^\r\n]*")
    assert "manufacture succeeded" in line, line
    spec = VmSpec(firmware=Firmware.UEFI, efi_vars=efi_vars, boot=BootDevice.DISK,
                  disks=disks, memory_mb=1024, no_reboot=True, nics=(Nic(),))
    decision, line, restore_console = boot_once(lab, spec, work, name="restore",
                                                until=RESTORED)
    assert (decision, "restore succeeded" in line) == ("restore", True), line
    decision, line, normal_console = boot_once(lab, spec, work, name="normal", until=WROTE)
    assert decision == "normal"
    secret = re.search(r"kiln-secret-[0-9a-f-]+", line)
    assert secret is not None, line
    assert contains(nvme, secret.group(0).encode())
    if restore_first:
        decision, line, _ = boot_once(lab, spec, work, name="requested-restore", until=RESTORED)
        assert (decision, "restore succeeded: demo 4.1.0" in line) == ("restore", True), line
        decision, line, normal_console = boot_once(lab, spec, work, name="normal-again",
                                                   until=KEPT)
        assert decision == "normal"
        assert f"kept {secret.group(0)}, erase requested" in line, line  # DATA kept it
    return OvmfUnit(spec=spec, nvme=nvme, recovery=recovery, serial=serial,
                    secret=secret.group(0).encode(), restore_console=restore_console,
                    normal_console=normal_console)


def _partitions(disk: Path) -> list[tuple[Any, ...]]:
    return [(p["start"], p["size"], p["type"], p["uuid"])
            for p in partition_table(disk)["partitions"]]


def test_a_whole_nvme_disk_is_formatted_gets_its_partitions_back_and_a_fresh_os_on_ovmf(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
        tmp_path: Path) -> None:
    """The lifecycle on OVMF: the image carries a newer Kiln ramdisk, which the first restore
    puts on the ESP (GRUB and NVRAM switched) and the firmware boots from then on; the OS asks
    for a restore, which keeps the secret it left on DATA, then for an erase; the erase
    formats the NVMe disk (a device-level method: RECOVERY is on the other disk), verifies the
    canaries, puts the planned partition table and an empty DATA back, and the next boots
    restore a fresh OS."""
    newer = BootPair(kernel=ramdisk.kernel, initrd=versioned_ramdisk(
        ramdisk.initrd, "7.1", tmp_path / "initrd-7.1.zst"), version="7.1")
    unit = _ovmf_unit(lab=lab, ramdisk=ramdisk, factory=factory, signing_key=signing_key,
                      work=tmp_path, serial="KILN-ERASE-0003", rejects=(), boot_files=newer,
                      restore_first=True)
    assert re.search(r"restore: boot files: Kiln boot files from the factory → 7\.1 \(.*\) "
                     r"in /kiln for uefi; NVRAM entries switched", unit.restore_console)
    assert "kiln: Kiln ramdisk 7.1 started" in unit.normal_console  # the new pair boots
    planned = _partitions(unit.nvme)

    decision, line, console = boot_once(lab, unit.spec, tmp_path, name="erase", until=ERASED)
    assert decision == "erase" and "kiln: Kiln ramdisk 7.1 started" in console
    assert "erase succeeded: disk nvme0n1: nvme-format-user-data" in line, line
    assert not contains(unit.nvme, unit.secret)
    assert _partitions(unit.nvme) == planned  # the same table, GUIDs and all
    [certificate] = certificates(factory, unit.serial)
    document = certificate["document"]
    assert document["result"] == "erased"
    [device] = document["devices"]
    assert (device["scope"], device["method"], device["transport"], device["verification"]) \
        == ("device", "nvme-format-user-data", "nvme", "passed"), device
    work = tmp_path / "check"
    work.mkdir()
    rec = placed(partition_table(unit.recovery), 1, "RECOVERY")
    assert "erase.json" not in ext4_listing(unit.recovery, rec, "/requests", work=work)

    decision, line, _ = boot_once(lab, unit.spec, tmp_path, name="fresh-restore",
                                  until=RESTORED)
    assert (decision, "restore succeeded: demo 4.1.0" in line) == ("restore", True), line
    decision, line, _ = boot_once(lab, unit.spec, tmp_path, name="fresh", until=VERSION)
    assert decision == "normal"
    assert line.endswith("version 4.1.0 secret none"), line  # a fresh OS, an empty DATA


def test_an_nvme_disk_that_fails_the_format_fails_the_erase_safely_on_ovmf(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
        tmp_path: Path) -> None:
    """The NVMe disk fails every write-zeroes (QEMU's Format NVM writes zeroes)."""
    unit = _ovmf_unit(lab=lab, ramdisk=ramdisk, factory=factory, signing_key=signing_key,
                      work=tmp_path, serial="KILN-ERASE-0002",
                      rejects=(RejectedOperation.WRITE_ZEROES,), boot_files=None)
    decision, line, console = boot_once(lab, unit.spec, tmp_path, name="erase", until=ERASED)
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
    [certificate] = certificates(factory, unit.serial)
    document = certificate["document"]
    assert document["result"] == "failed"
    [device] = document["devices"]
    assert (device["scope"], device["method"], device["serial"], device["verification"]) == (
        "device", None, "NVME0002", "failed")
    assert [(a["method"], a["result"]) for a in device["attempts"]] == [
        ("nvme-format-user-data", "failed"), ("discard", "failed"), ("overwrite", "failed")]
    assert "Internal Error" in device["attempts"][0]["detail"]
    work = tmp_path / "check"
    work.mkdir()
    rec = placed(partition_table(unit.recovery), 1, "RECOVERY")
    assert "erase.json" in ext4_listing(unit.recovery, rec, "/requests", work=work)  # tried again
