"""Manufacture end to end in QEMU: the real ramdisk PXE-boots with `mfgurl=` pointing at a
real `kiln server`, validates the VM's hardware, partitions its disk, fills RECOVERY, sets up
booting and reports; the unit then boots its own disk into the Kiln ramdisk, which restores
(PRIMARY was wiped). A unit that does not match its variant fails without a byte written to
its disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from initramfs.builder import RamdiskBuild
from lab import Lab
from lab.diskimage import ext4_listing, ext4_read
from lab.efivars import boot_config
from lab.spec import DEFAULT_MAC, Disk, Firmware
from tests.provision.qemu_factory import (
    MIB,
    QEMU_COMMANDS,
    RECOVERY_BYTES,
    Factory,
    blank_disk,
    boot_from_disk,
    boot_unit,
    line_key,
    partition_table,
    placed,
    sha256_of,
    stored_images,
)

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]

def test_a_unit_is_manufactured_on_seabios(lab: Lab, ramdisk: RamdiskBuild, factory: Factory,
                                           tmp_path: Path) -> None:
    serial = "KILN-QEMU-0001"
    disk, verdict = boot_unit(lab, ramdisk, tmp_path, mfgurl=factory.mfgurl, serial=serial,
                              memory_mb=1024)
    assert verdict.result == "succeeded", verdict.line

    unit = factory.api(f"units/{serial}")
    assert (unit["lifecycle"], unit["status"]) == ("manufacture", "succeeded")
    assert unit["variant"] == "qemu-lab" and unit["profile"] == "line1"
    assert unit["macs"] == [DEFAULT_MAC]
    assert unit["dmi"]["product_serial"] == serial
    assert unit["dmi"]["sys_vendor"] == "Kiln Lab"
    assert unit["credential_escrowed"]
    events = factory.api(f"units/{serial}/events")["events"]
    finished = {e["name"]: e["result"] for e in events if e["type"] == "finish"}
    for stage in ("manufacture", "manufacture/validate", "manufacture/credentials",
                  "manufacture/partition", "manufacture/mount", "manufacture/recovery",
                  f"manufacture/recovery/Image/{factory.image.name}", "manufacture/keys",
                  "manufacture/state", "manufacture/secrets", "manufacture/wipe"):
        assert finished.get(stage) == "success", (stage, finished)
    assert finished["manufacture/boot"] == "success"
    report = factory.api(f"units/{serial}/qa-report")
    assert report["result"] == "pass" and report["serial"] == serial
    assert report["hardware"]["memory_bytes"] > 0

    table = partition_table(disk)
    assert table["label"] == "dos"  # SeaBIOS: MBR
    recovery, primary = table["partitions"]
    assert (recovery["start"], recovery["size"]) == (2048, RECOVERY_BYTES // 512)
    assert recovery.get("bootable") is True
    assert primary["start"] == 2048 + RECOVERY_BYTES // 512
    rec = placed(table, 0, "RECOVERY")
    work = tmp_path / "check"
    work.mkdir()
    [stored] = stored_images(disk, rec, work=work)
    assert ext4_read(disk, rec, f"/Image/{stored}", work=work) == factory.image.read_bytes()
    identity = json.loads(ext4_read(disk, rec, "/state/identity.json", work=work))
    assert identity["serial"] == serial and identity["variant"] == "qemu-lab"
    assert "test.pub" in ext4_listing(disk, rec, "/keys", work=work)
    state = ext4_listing(disk, rec, "/state", work=work)
    assert {"admin-password.sha512crypt", "device-token", "factory.json"} <= set(state)
    logs = ext4_listing(disk, rec, "/log", work=work)
    assert any(name.startswith("events-") for name in logs)
    [run_log] = [name for name in logs if name.endswith(".log")]
    text = ext4_read(disk, rec, f"/log/{run_log}", work=work).decode()
    assert "manufacture: wipe done" in text
    assert line_key(factory.mfgurl) not in text
    with disk.open("rb") as handle:  # PRIMARY's start is wiped: the next boot restores
        handle.seek(primary["start"] * 512)
        assert handle.read(MIB) == bytes(MIB)
    assert ext4_read(disk, rec, "/boot/vmlinuz", work=work) == ramdisk.kernel.read_bytes()
    grub = ext4_read(disk, rec, "/boot/grub/grub.cfg", work=work).decode()
    assert grub.count("menuentry") == 3 and "kiln.mode=erase" in grub
    # The unit boots its own disk: SeaBIOS → the MBR → GRUB → the Kiln ramdisk → restore.
    assert boot_from_disk(lab, (Disk(image=disk),), tmp_path, firmware=Firmware.BIOS) == "restore"


def test_a_unit_with_too_little_memory_fails_and_its_disk_is_untouched(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, tmp_path: Path) -> None:
    serial = "KILN-QEMU-0002"
    blank_disk(tmp_path / "blank.img")
    blank = sha256_of(tmp_path / "blank.img")
    disk, verdict = boot_unit(lab, ramdisk, tmp_path, mfgurl=factory.mfgurl, serial=serial,
                              memory_mb=768)
    assert verdict.result == "failed", verdict.line
    assert "memory" in verdict.line
    unit = factory.api(f"units/{serial}")
    assert (unit["lifecycle"], unit["status"]) == ("manufacture", "failed")
    assert "memory: expected" in unit["failure"]
    events = factory.api(f"units/{serial}/events")["events"]
    finished = {e["name"]: e for e in events if e["type"] == "finish"}
    assert finished["manufacture/validate"]["result"] == "fail"
    assert "memory" in finished["manufacture/validate"]["message"]
    assert "manufacture/partition" not in {e["name"] for e in events}
    assert sha256_of(disk) == blank


def test_a_unit_is_manufactured_on_ovmf(lab: Lab, ramdisk: RamdiskBuild, factory: Factory,
                                        tmp_path: Path) -> None:
    serial = "KILN-QEMU-0003"
    disk, verdict = boot_unit(lab, ramdisk, tmp_path, mfgurl=factory.mfgurl, serial=serial,
                              memory_mb=1024, firmware=Firmware.UEFI)
    assert verdict.result == "succeeded", verdict.line
    unit = factory.api(f"units/{serial}")
    assert (unit["lifecycle"], unit["status"]) == ("manufacture", "succeeded")
    table = partition_table(disk)
    assert table["label"] == "gpt"  # UEFI: GPT with the ESP first
    esp, recovery, _primary = table["partitions"]
    assert esp["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert recovery["size"] == RECOVERY_BYTES // 512
    work = tmp_path / "check"
    work.mkdir()
    rec = placed(table, 1, "RECOVERY")
    assert len(stored_images(disk, rec, work=work)) == 1
    assert "identity.json" in ext4_listing(disk, rec, "/state", work=work)
    events = factory.api(f"units/{serial}/events")["events"]
    boot = [e for e in events if e["type"] == "finish" and e["name"] == "manufacture/boot"]
    assert boot[0]["result"] == "success" and "3 Kiln NVRAM entries" in boot[0]["message"]
    # Read from the OVMF variable store on the host: one entry per mode, normal boot first.
    config = boot_config(tmp_path / "unit.vars")
    kiln = sorted(e.description for e in config.entries if e.description.startswith("Kiln"))
    assert kiln == ["Kiln", "Kiln data erase", "Kiln factory restore"]
    first = config.ordered()[0]
    assert (first.description, first.file_path) == ("Kiln", "\\kiln\\vmlinuz")
    # The same variable store: the firmware follows Kiln's NVRAM entry to the ramdisk.
    assert boot_from_disk(lab, (Disk(image=disk),), tmp_path, firmware=Firmware.UEFI,
                          efi_vars=tmp_path / "unit.vars") == "restore"
