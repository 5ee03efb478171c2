"""Factory restore in QEMU: a unit manufactured with a small test OS as its image boots its
disk, restores (the Kiln ramdisk from GRUB on RECOVERY; the image's newer Kiln ramdisk
installed), reboots and boots that OS, which sees the identity restore wrote; the OS stores
a newer, corrupt image on RECOVERY and requests a restore, which quarantines that image,
restores the previous one in the same boot and keeps DATA."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from initramfs.builder import RamdiskBuild
from kiln.image.signing import SigningKey, TrustStore
from lab import Lab
from lab.diskimage import ext4_listing, ext4_read
from lab.profile import MIB, LabUnit, lab_manufdata
from lab.spec import BootDevice, Disk, Firmware, VmSpec
from tests.provision.qemu_factory import (
    QEMU_COMMANDS,
    Factory,
    blank_disk,
    manufacture_direct,
    partition_table,
    placed,
    stored_images,
)
from tests.recovery.test_store import flip_byte_in_frame
from tests.recovery.testos import OS_MARK, BootPair, make_os_image, versioned_ramdisk

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]


def _boot_disk(lab: Lab, disk: Path, work: Path, *, name: str,
               until: str) -> tuple[str, str]:
    spec = VmSpec(firmware=Firmware.BIOS, boot=BootDevice.DISK, disks=(Disk(image=disk),),
                  memory_mb=1024, no_reboot=True)
    with lab.vm(spec) as vm:
        decision = vm.wait_for(r"kiln: decision: ([a-z]+)", timeout=300)
        found = vm.wait_for(until, timeout=600)
        vm.wait_exit(timeout=300)
        (work / f"{name}.txt").write_text(vm.console_text())
    assert "Kernel panic" not in vm.console_text()
    return decision.group(1), found.group(0)


def test_manufacture_then_the_first_restore_then_a_normal_boot(
        *, lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
        trust: TrustStore, tmp_path: Path) -> None:
    # The image carries a newer Kiln ramdisk (the session's, saying it is 7.0): the first
    # restore installs it and GRUB boots it from then on. Its OS stores a newer image,
    # corrupt, on RECOVERY (as an update agent would) before it asks for a restore.
    newer = BootPair(kernel=ramdisk.kernel, initrd=versioned_ramdisk(
        ramdisk.initrd, "7.0", tmp_path / "initrd-7.0.zst"), version="7.0")
    corrupt = make_os_image(tmp_path, signing_key, "3.2.0")
    flip_byte_in_frame(corrupt, trust, 0)
    image = make_os_image(tmp_path, signing_key, "3.1.0", boot_files=newer, stores=corrupt)
    image_id = factory.server.push_image(factory.token, image)
    mfgurl = factory.profile("line-os", lab_manufdata(
        image=image, image_id=image_id, kernel=ramdisk.kernel, initrd=ramdisk.initrd,
        unit=LabUnit(data_bytes=256 * MIB)))
    serial = "KILN-LIFE-0001"
    disk = tmp_path / "unit.img"
    blank_disk(disk)
    made = manufacture_direct(lab, ramdisk, tmp_path, mfgurl=mfgurl, serial=serial,
                              disks=(Disk(image=disk),), name="manufacture")
    assert made.result == "succeeded", made.line

    decision, line = _boot_disk(lab, disk, tmp_path, name="restore",
                                until=r"kiln: restore (succeeded|failed): [^\r\n]*")
    assert decision == "restore"
    assert "restore succeeded: demo 3.1.0" in line, line

    decision, line = _boot_disk(lab, disk, tmp_path, name="normal",
                                until=OS_MARK + r"[^\r\n]*")
    assert decision == "normal"
    assert " pid 1 version 3.1.0 host kiln-life-0001 data none id " in line, line

    # The OS asked for a restore that keeps DATA: the next boot restores — the newest image,
    # 3.2.0, fails its frame check, is quarantined, and 3.1.0 is restored in the same boot —
    # the one after finds the customer's file still on DATA.
    decision, again = _boot_disk(lab, disk, tmp_path, name="requested",
                                 until=r"kiln: restore (succeeded|failed): [^\r\n]*")
    assert decision == "restore", again
    assert "restore succeeded: demo 3.1.0" in again and "gave up on 1 bad image(s)" in again
    assert re.search(r"restore: demo 3\.2\.0 .*is bad \(.*\): quarantined; trying the next",
                     (tmp_path / "requested.txt").read_text())
    decision, after = _boot_disk(lab, disk, tmp_path, name="normal-again",
                                 until=OS_MARK + r"[^\r\n]*")
    assert decision == "normal"
    assert " version 3.1.0 " in after and " data keep me id " in after, after
    assert after.split(" id ")[1] == line.split(" id ")[1]  # the same machine-id

    table = partition_table(disk)
    rec = placed(table, 0, "RECOVERY")
    work = tmp_path / "check"
    work.mkdir()
    machine_id = ext4_read(disk, rec, "/state/machine-id", work=work).decode().strip()
    assert line.endswith(machine_id)
    state = ext4_listing(disk, rec, "/state", work=work)
    assert "restore-journal.json" not in state and "disks.json" in state
    # The ramdisk counted each hand-over to the OS; the OS confirmed it (kiln boot-done).
    assert "installed.json" in state and "unconfirmed-boots.json" not in state
    for name in ("normal", "normal-again"):
        assert "normal boot 1 of demo 3.1.0" in (tmp_path / f"{name}.txt").read_text()
    # The boot files: the factory's ramdisk restored and installed the image's newer one;
    # every later boot ran it; the requested restore found nothing newer.
    assert "kiln: Kiln ramdisk started" in (tmp_path / "restore.txt").read_text()
    assert "restore: boot files: Kiln boot files from the factory → 7.0 (" in \
        (tmp_path / "restore.txt").read_text()
    for name in ("normal", "requested", "normal-again"):
        assert "kiln: Kiln ramdisk 7.0 started" in (tmp_path / f"{name}.txt").read_text(), name
    assert "boot files: Kiln" not in (tmp_path / "requested.txt").read_text()
    boot = sorted(ext4_listing(disk, rec, "/boot", work=work))
    assert len(boot) == 3 and "grub" in boot, boot  # the factory's pair is gone
    assert all(name.startswith(("initrd-7.0-", "vmlinuz-7.0-")) for name in boot
               if name != "grub"), boot
    record = json.loads(ext4_read(disk, rec, "/state/boot-files.json", work=work))
    assert record["version"] == "7.0" and f"/boot/{record['kernel']} " in \
        ext4_read(disk, rec, "/boot/grub/grub.cfg", work=work).decode()
    history = json.loads(ext4_read(disk, rec, "/state/image-history.json", work=work))
    assert '"successes": 2' in json.dumps(history)  # the first restore and the requested one
    assert "restore.json" not in ext4_listing(disk, rec, "/requests", work=work)
    quarantined = ext4_listing(disk, rec, "/Image/quarantine", work=work)
    assert {"stored.upd", "stored.upd.reason.json"} <= set(quarantined), quarantined
    assert len(stored_images(disk, rec, work=work)) == 1  # 3.1.0, the factory's
