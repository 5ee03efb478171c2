"""Boot setup: the GRUB config as text, then real disks on loop devices booted by real
firmware (SeaBIOS; OVMF with an empty variable store, so only the fallback path can work)
into the Kiln ramdisk, which must reach its decision.

The loop+QEMU tests need root; each partitions a sparse 2 GiB file with
`recovery.partitioning`, mounts ESP/RECOVERY, runs `install_boot` twice (the second run must
change nothing but rewrite the same files), unmounts, detaches and boots the file as the VM's
only disk: no -kernel, no PXE.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from initramfs.builder import RamdiskBuild
from kiln.manufdata import GIB, MIB, DiskLayout, Firmware
from kiln.process import run
from lab import Lab
from lab.efivars import boot_config
from lab.spec import DirectKernel, Disk, VmSpec
from lab.spec import Firmware as LabFirmware
from recovery.bootsetup import (
    MENU,
    BootSetup,
    BootSetupError,
    grub_config,
    install_boot,
    serial_unit,
)
from recovery.partitioning import AppliedDisk, apply_plan
from recovery.partitions import PartitionRole, TargetDisk, plan_layout
from recovery.uefi_entries import EspLocation
from tests.recovery.loopdisk import mounted

CONSOLE = "console=tty0 console=ttyS0,115200"
DISK_BYTES = 2 * GIB
LAYOUT = DiskLayout(recovery_size_bytes=160 * MIB, esp_size_bytes=64 * MIB)
LOOP_TOOLS = ("losetup", "wipefs", "sfdisk", "mkfs.vfat", "mkfs.ext4", "blkid", "udevadm",
              "mount", "umount", "grub-mkimage", "grub-mkstandalone", "mcopy")
DECISION = r"kiln: decision: (\w+) \((.*)\)"


# The config, as text.

def test_the_config_offers_three_entries_normal_first_and_default() -> None:
    text = grub_config(fs_uuid="1234-ABCD", kernel="/kiln/vmlinuz", initrd="/kiln/initrd.zst",
                       console_args=CONSOLE, timeout=3)
    assert "set default=kiln-normal\nset timeout=3\n" in text
    assert "search --no-floppy --fs-uuid --set=root 1234-ABCD\n" in text
    assert "serial --unit=0 --speed=115200\n" in text
    assert "terminal_output serial console\n" in text
    entries = text.split("menuentry ")[1:]
    assert [e.splitlines()[0] for e in entries] == [
        "'Kiln' --id kiln-normal --hotkey n {",
        "'Kiln factory restore' --id kiln-restore --hotkey r {",
        "'Kiln data erase' --id kiln-erase --hotkey d {"]
    assert [e.splitlines()[1] for e in entries] == [
        f"\tlinux /kiln/vmlinuz {CONSOLE}",
        f"\tlinux /kiln/vmlinuz {CONSOLE} kiln.mode=restore",
        f"\tlinux /kiln/vmlinuz {CONSOLE} kiln.mode=erase"]
    assert all(e.splitlines()[2] == "\tinitrd /kiln/initrd.zst" for e in entries)


def test_without_a_serial_console_grub_keeps_its_default_terminal() -> None:
    text = grub_config(fs_uuid="u", kernel="/k", initrd="/i", console_args="")
    assert "serial" not in text
    assert "\tlinux /k\n" in text  # no trailing blank for the normal entry


@pytest.mark.parametrize(("args", "unit"), [
    ("console=ttyS0,115200n8", (0, 115200)), ("console=tty0 console=ttyS1", (1, 115200)),
    ("console=ttyS2,9600", (2, 9600)), ("console=tty0", None), ("quiet", None),
    ("console=ttyUSB0", None),
])
def test_serial_unit(args: str, unit: tuple[int, int] | None) -> None:
    assert serial_unit(args) == unit


def test_quoting_in_a_config_value_is_refused() -> None:
    with pytest.raises(BootSetupError, match="quoting"):
        grub_config(fs_uuid="u", kernel="/k", initrd="/i", console_args="x='; reboot'")


def test_uefi_without_an_esp_mount_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BootSetupError, match="needs the ESP mounted"):
        install_boot(firmware=Firmware.UEFI, disk=Path("/dev/vda"), applied=None,  # type: ignore[arg-type]
                     esp_mount=None, recovery_mount=tmp_path, kernel=tmp_path / "k",
                     initrd=tmp_path / "i", console_args="")


# Real disks, real firmware.

@dataclass(frozen=True, kw_only=True)
class Prepared:
    image: Path
    applied: AppliedDisk
    first: BootSetup
    second: BootSetup
    files_first: dict[str, bytes]
    files_second: dict[str, bytes]


def _uuids() -> uuid.UUID:
    return uuid.uuid4()


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (grubenv aside, which GRUB may rewrite)."""
    return {os.fspath(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def prepare(tmp_path: Path, firmware: Firmware, ramdisk: RamdiskBuild) -> Prepared:
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    image = tmp_path / "unit.img"
    with image.open("wb") as f:
        f.truncate(DISK_BYTES)
    device = Path(run(["losetup", "--find", "--show", "--partscan", image]).text.strip())
    try:
        (plan,) = plan_layout(LAYOUT, firmware=firmware, new_uuid=_uuids, primary=TargetDisk(
            name=os.fspath(device), size_bytes=DISK_BYTES))
        applied = apply_plan(plan, device)
        return _fill(tmp_path, device=device, image=image, firmware=firmware, applied=applied,
                     ramdisk=ramdisk)
    finally:
        run(["losetup", "--detach", device])


def _fill(tmp_path: Path, *, device: Path, image: Path, firmware: Firmware,
          applied: AppliedDisk, ramdisk: RamdiskBuild) -> Prepared:
    boot_role = PartitionRole.ESP if firmware is Firmware.UEFI else PartitionRole.RECOVERY
    with mounted(applied.node(PartitionRole.RECOVERY), tmp_path / "recovery") as recovery:
        (recovery / "boot").mkdir()
        kernel, initrd = recovery / "boot" / "vmlinuz", recovery / "boot" / "initrd.zst"
        kernel.write_bytes(ramdisk.kernel.read_bytes())
        initrd.write_bytes(ramdisk.initrd.read_bytes())
        # This host's kernel has no vfat: the ESP's files are staged, then copied with mtools.
        esp = tmp_path / "esp" if firmware is Firmware.UEFI else None
        root = esp or recovery
        setups, snapshots = [], []
        for _ in range(2):
            setups.append(install_boot(
                firmware=firmware, disk=device, applied=applied, esp_mount=esp,
                recovery_mount=recovery, kernel=kernel, initrd=initrd, console_args=CONSOLE))
            snapshots.append(_snapshot(root))
        if esp is not None:
            run(["mcopy", "-s", "-Q", "-i", applied.node(PartitionRole.ESP),
                 *sorted(esp.iterdir()), "::/"])
    assert applied.node(boot_role).exists()
    return Prepared(image=image, applied=applied, first=setups[0], second=setups[1],
                    files_first=snapshots[0], files_second=snapshots[1])


def _check_re_run(prepared: Prepared) -> None:
    assert prepared.first.config_text == prepared.second.config_text
    grubenv = [name for name in prepared.files_first if name.endswith("grubenv")]
    first = {k: v for k, v in prepared.files_first.items() if k not in grubenv}
    second = {k: v for k, v in prepared.files_second.items() if k not in grubenv}
    assert first.keys() == second.keys(), "a re-run must not add or remove files"
    # grub-mkstandalone's memdisk carries build times: the loader is rebuilt, never added.
    changed = [name for name in first if first[name] != second[name]
               and name != "EFI/BOOT/BOOTX64.EFI"]
    assert changed == [], f"a re-run changed {changed}"


@pytest.mark.loop
@pytest.mark.qemu
@pytest.mark.allow_commands(*LOOP_TOOLS, "qemu-system-x86_64", "qemu-img")
def test_uefi_disk_boots_by_the_fallback_path_then_by_kiln_nvram_entries(
    lab: Lab, ramdisk: RamdiskBuild, tmp_path: Path
) -> None:
    prepared = prepare(tmp_path, Firmware.UEFI, ramdisk)
    setup = prepared.first
    assert setup.loader.name == "BOOTX64.EFI" and setup.loader.parent.name == "BOOT"
    assert "EFI/BOOT/BOOTX64.EFI" in prepared.files_first
    assert {"kiln/vmlinuz", "kiln/initrd.zst", "boot/grub/grub.cfg"} <= \
        prepared.files_first.keys()
    assert prepared.files_first["kiln/initrd.zst"] == ramdisk.initrd.read_bytes()
    assert [e.id for e in setup.entries] == [e.id for e in MENU]
    _check_re_run(prepared)
    nvram = tmp_path / "unit.vars"  # a fresh copy of OVMF's empty variable store
    spec = VmSpec(firmware=LabFirmware.UEFI, disks=(Disk(image=prepared.image),),
                  memory_mb=1024, no_reboot=True, efi_vars=nvram)
    with lab.vm(spec) as vm:
        vm.wait_for(r"Kiln factory restore", timeout=180)  # GRUB's menu on the serial port
        decision = vm.wait_for(DECISION, timeout=180)
    assert decision.group(1) == "restore"  # the normal entry: PRIMARY is empty
    assert not [e for e in boot_config(nvram).entries if e.description.startswith("Kiln")]
    _nvram_entries_in_the_unit(lab, ramdisk, prepared, nvram)


def _nvram_entries_in_the_unit(lab: Lab, ramdisk: RamdiskBuild, prepared: Prepared,
                               nvram: Path) -> None:
    """In the unit (the ramdisk's shell, real efivarfs on OVMF): ensure the entries twice."""
    esp = EspLocation.from_plan(prepared.applied.plan)
    call = ("from recovery.uefi_entries import EspLocation as L, ensure_uefi_entries as e; "
            f"[e(esp=L(number={esp.number}, partition_uuid='{esp.partition_uuid}', "
            f"start={esp.start}, sectors={esp.sectors}), console_args='console=ttyS0,115200')"
            " for _ in range(2)]; print('nvram-' + 'ok')")
    spec = VmSpec(firmware=LabFirmware.UEFI, disks=(Disk(image=prepared.image),),
                  boot=DirectKernel(kernel=ramdisk.kernel, initrd=ramdisk.initrd,
                                    append="console=ttyS0 quiet kiln.mode=shell"),
                  memory_mb=1024, no_reboot=True, efi_vars=nvram)
    with lab.vm(spec) as vm:
        vm.wait_for(r"kiln# ", timeout=180)
        vm.type(f'python3 -c "{call}"\n')
        vm.wait_for(r"nvram-ok", timeout=120)
    config = boot_config(nvram)
    kiln = sorted(e.description for e in config.entries if e.description.startswith("Kiln"))
    assert kiln == ["Kiln", "Kiln data erase", "Kiln factory restore"], "one of each"
    first = config.ordered()[0]
    assert (first.description, first.file_path) == ("Kiln", "\\kiln\\vmlinuz")
    assert [e.description for e in config.ordered()].count("Kiln") == 1
    # The firmware now follows Kiln's entry: the kernel's EFI stub, no GRUB menu on the way.
    spec = VmSpec(firmware=LabFirmware.UEFI, disks=(Disk(image=prepared.image),),
                  memory_mb=1024, no_reboot=True, efi_vars=nvram)
    with lab.vm(spec) as vm:
        decision = vm.wait_for(DECISION, timeout=180)
        text = vm.console_text()
    assert decision.group(1) == "restore"
    assert "Kiln factory restore" not in text, "booted through GRUB, not the NVRAM entry"


@pytest.mark.loop
@pytest.mark.qemu
@pytest.mark.allow_commands(*LOOP_TOOLS, "qemu-system-x86_64", "qemu-img")
def test_bios_disk_boots_from_the_mbr_and_the_erase_entry_says_erase(
    lab: Lab, ramdisk: RamdiskBuild, tmp_path: Path
) -> None:
    prepared = prepare(tmp_path, Firmware.BIOS, ramdisk)
    assert {"boot/vmlinuz", "boot/initrd.zst", "boot/grub/grub.cfg",
            "boot/grub/i386-pc/core.img"} <= prepared.files_first.keys()
    assert prepared.first.config == prepared.first.config  # same path on both runs
    _check_re_run(prepared)
    spec = VmSpec(firmware=LabFirmware.BIOS, disks=(Disk(image=prepared.image),),
                  memory_mb=1024, no_reboot=True)
    with lab.vm(spec) as vm:
        vm.wait_for(r"Kiln data erase", timeout=120)
        vm.type("d")  # the erase entry's hotkey
        decision = vm.wait_for(DECISION, timeout=180)
    assert decision.group(1) == "erase"
