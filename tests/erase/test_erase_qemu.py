"""Data erase in QEMU, from a request in the running OS to a fresh OS, on both firmwares:

- SeaBIOS, one AHCI disk that holds RECOVERY: PRIMARY and DATA are erased as partitions; the
  customer's secret (on DATA and PRIMARY) is found nowhere on the disk afterwards, RECOVERY
  still holds its image and the certificate, the server has the certificate, and the next
  boots restore and start a fresh OS with an empty DATA.
- OVMF, RECOVERY on its own disk and PRIMARY/DATA on an NVMe disk that fails every
  write-zeroes (QEMU's Format NVM writes zeroes): the format fails and leaves the namespace
  unusable; erase falls back to each next method and says so, and ends failed — certificate
  `failed` at the server, the request kept for the next boot, a 30 s back-off.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from initramfs.builder import RamdiskBuild
from kiln.image.signing import SigningKey
from lab import Lab
from lab.diskimage import ext4_listing, ext4_read
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
from tests.recovery.testos import BootPair, make_os_image, versioned_ramdisk

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]

OS_MARK = "KILN-ERASE-OS:"
# The test OS: on a boot that finds DATA empty it leaves a secret on DATA and on PRIMARY
# (printed, so the test knows what to look for) and asks for an erase, as
# `kiln request erase --yes` would.
ERASE_OS_INIT = f"""#!/bin/busybox sh
b=/bin/busybox
$b mount -t proc proc /proc
$b mount -t tmpfs tmpfs /run
$b mkdir -p /run/data /run/recovery
$b mount "$($b findfs LABEL=DATA)" /run/data
$b mount "$($b findfs LABEL=RECOVERY)" /run/recovery
secret=$($b cat /run/data/secret.txt 2>/dev/null || $b echo none)
$b rm -f /run/recovery/state/unconfirmed-boots.json  # kiln boot-done
$b echo "{OS_MARK} version $($b cat /etc/version) secret $secret"
if [ "$secret" = none ]; then
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


def test_erase_on_the_recovery_disk_then_a_fresh_os(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
        tmp_path: Path) -> None:
    image = _os_image(tmp_path, signing_key, "4.0.0")
    image_id = factory.server.push_image(factory.token, image)
    mfgurl = factory.profile("line-erase", lab_manufdata(
        image=image, image_id=image_id, kernel=ramdisk.kernel, initrd=ramdisk.initrd,
        unit=LabUnit(data_bytes=256 * MIB)))
    serial = "KILN-ERASE-0001"
    disk = tmp_path / "unit.img"
    blank_disk(disk)
    disks = (Disk(image=disk, interface=DiskInterface.AHCI),)
    made = manufacture_direct(lab, ramdisk, tmp_path, mfgurl=mfgurl, serial=serial,
                              disks=disks, name="manufacture")
    assert made.result == "succeeded", made.line
    spec = VmSpec(firmware=Firmware.BIOS, boot=BootDevice.DISK, disks=disks, memory_mb=1024,
                  no_reboot=True, nics=(Nic(),))
    restored = r"kiln: restore (succeeded|failed): [^\r\n]*"
    erased = r"kiln: erase (succeeded|failed): [^\r\n]*"

    decision, line, _ = _boot(lab, spec, tmp_path, name="restore", until=restored)
    assert (decision, "restore succeeded" in line) == ("restore", True), line
    decision, line, _ = _boot(lab, spec, tmp_path, name="normal", until=WROTE)
    assert decision == "normal"
    secret = re.search(r"kiln-secret-[0-9a-f-]+", line)
    assert secret is not None, line
    assert _contains(disk, secret.group(0).encode())  # the search can find it

    decision, line, console = _boot(lab, spec, tmp_path, name="erase", until=erased)
    assert decision == "erase"
    assert "erase succeeded: PRIMARY: discard; DATA: discard" in line, line
    assert "passed over: device-level methods: this disk holds RECOVERY" in console
    assert not _contains(disk, secret.group(0).encode())  # not on DATA, not on PRIMARY

    table = partition_table(disk)
    rec = placed(table, 0, "RECOVERY")
    work = tmp_path / "check"
    work.mkdir()
    assert len(stored_images(disk, rec, work=work)) == 1  # RECOVERY intact
    [name] = [n for n in ext4_listing(disk, rec, "/certificates", work=work)
              if n.endswith(".json")]
    on_disk = json.loads(ext4_read(disk, rec, f"/certificates/{name}", work=work))
    assert on_disk["result"] == "erased" and on_disk["serial"] == serial
    assert {d["target"]: d["verification"] for d in on_disk["devices"]} == {
        "PRIMARY": "passed", "DATA": "passed"}
    for device in on_disk["devices"]:  # "12 of 12 gone"
        gone, _, written, _ = device["canaries"].split()
        assert gone == written and int(written) >= 8, device
    assert all(d["transport"] == "sata" for d in on_disk["devices"])
    [at_server] = _certificates(factory, serial)
    assert at_server["run_id"] == on_disk["run_id"]
    assert "erase.json" not in ext4_listing(disk, rec, "/requests", work=work)

    decision, line, _ = _boot(lab, spec, tmp_path, name="fresh-restore", until=restored)
    assert (decision, "restore succeeded: demo 4.0.0" in line) == ("restore", True), line
    decision, line, _ = _boot(lab, spec, tmp_path, name="fresh", until=VERSION)
    assert decision == "normal"
    assert line.endswith("version 4.0.0 secret none"), line  # a fresh OS, an empty DATA


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
