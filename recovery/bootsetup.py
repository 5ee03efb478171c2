"""Boot setup: make a partitioned disk boot the Kiln kernel and ramdisk, with a menu.

Manufacture calls `install_boot` after `recovery.partitioning.apply_plan` has made the file
systems and RECOVERY holds the Kiln kernel and ramdisk; the unit then boots from its own
disk. Rules:

- **One boot manager: GRUB 2** for both firmwares. It reads ext4 and vfat (RECOVERY keeps
  Debian's ext4 defaults, `64bit` included, which extlinux cannot boot), has one config format
  for both, its images are built by its own tools (`grub-mkstandalone`, `grub-mkimage`)
  without a running boot manager, and buildroot can put the same tools and platform modules
  in the production ramdisk (`BR2_TARGET_GRUB2_INSTALL_TOOLS`), which neither systemd-boot
  (needs systemd as init there) nor extlinux (buildroot ships syslinux only as host-built
  images) can.
- **Three entries, normal first and default**: `Kiln` (no extra argument: the ramdisk
  decides normal boot or restore itself), `Kiln factory restore` (`kiln.mode=restore`),
  `Kiln data erase` (`kiln.mode=erase`). Each gets the caller's console arguments; a serial
  `console=ttySN[,baud]` also puts GRUB's own menu on that port. Hotkeys n, r, d boot an
  entry at once (e and c are GRUB's edit and command-line keys).
- **UEFI**: the kernel and ramdisk are copied to `ESP/kiln/`; GRUB goes to the removable
  fallback path `\\EFI\\BOOT\\BOOTX64.EFI` as one standalone binary (`grub-mkstandalone`:
  modules inside, and a built-in config that finds the ESP by UUID and reads
  `ESP/boot/grub/grub.cfg`). Nothing is probed, so `esp_mount` may be any directory that
  becomes the ESP's root (the unit mounts the ESP; a host without vfat stages and copies).
  The unit boots with an empty or reset NVRAM; Kiln's own NVRAM entries are a separate step
  that needs real efivars (`recovery.uefi_entries`).
- **BIOS**: the kernel and ramdisk stay on (or are copied to) `RECOVERY/boot/`; GRUB's boot
  code goes into the MBR and the gap after it, its modules and `grub.cfg` to
  `RECOVERY/boot/grub/` (`recovery.grubpc`: grub-install cannot map loop partitions to BIOS
  drives, and its probing is not needed when the plan says where everything is).
- **Root by UUID**: `grub.cfg` finds its file system by the UUID the partition plan gave it,
  never by a BIOS drive number or partition index.
- **Idempotent**: every run rewrites the same files in place (kernel, ramdisk and config
  through a temporary name and a rename); nothing accumulates on a re-run.
- Every program runs through `kiln.process.run`; a failure raises `BootSetupError` naming
  the step and the disk.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.manufdata import Firmware
from kiln.process import CommandError, run
from recovery.grubpc import GrubPcError, install_grub_pc
from recovery.partitioning import AppliedDisk
from recovery.partitions import PartitionRole

ESP_KILN_DIR = "kiln"  # on the ESP: vmlinuz, initrd.zst
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.zst"
FALLBACK_LOADER = Path("EFI/BOOT/BOOTX64.EFI")
DEFAULT_MENU_TIMEOUT = 3
GRUB_TIMEOUT = 120.0
_NO_EXTRAS = ["--locales=", "--fonts=", "--themes="]  # nothing but the loader and modules


class BootSetupError(KilnError):
    """Installing the boot manager failed; the message names the disk and the step."""


@dataclass(frozen=True, kw_only=True)
class MenuEntry:
    id: str
    title: str
    args: str  # what the entry adds to the console arguments
    hotkey: str


MENU: tuple[MenuEntry, ...] = (
    MenuEntry(id="kiln-normal", title="Kiln", args="", hotkey="n"),
    MenuEntry(id="kiln-restore", title="Kiln factory restore", args="kiln.mode=restore",
              hotkey="r"),
    MenuEntry(id="kiln-erase", title="Kiln data erase", args="kiln.mode=erase", hotkey="d"),
)


@dataclass(frozen=True, kw_only=True)
class BootSetup:
    """What `install_boot` wrote."""

    firmware: Firmware
    disk: Path
    loader: Path  # UEFI: the fallback BOOTX64.EFI; BIOS: the disk whose MBR holds the code
    config: Path  # grub.cfg
    kernel: Path
    initrd: Path
    entries: tuple[MenuEntry, ...]
    config_text: str


def kernel_arguments(entry: MenuEntry, console_args: str) -> str:
    return " ".join(part for part in (console_args.strip(), entry.args) if part)


def console_arguments(cmdline: str) -> str:
    """The `console=` words of a kernel command line: the unit keeps the consoles it booted
    with (the factory line's at manufacture, GRUB's entry's after)."""
    return " ".join(word for word in cmdline.split() if word.startswith("console="))


def running_console_arguments(root: Path = Path("/")) -> str:
    """The running kernel's `console=` arguments (none when /proc cannot be read)."""
    try:
        return console_arguments((root / "proc/cmdline").read_text())
    except OSError:
        return ""


def serial_unit(console_args: str) -> tuple[int, int] | None:
    """(unit, baud) of the first `console=ttySN[,baud…]`, for GRUB's own serial terminal."""
    for word in console_args.split():
        key, _, value = word.partition("=")
        device, _, options = value.partition(",")
        if key == "console" and device.startswith("ttyS") and device[4:].isdigit():
            digits = "".join(c for c in options[:7] if c.isdigit()) if options else ""
            return int(device[4:]), int(digits or 115200)
    return None


def grub_config(*, fs_uuid: str, kernel: str, initrd: str, console_args: str,
                timeout: int = DEFAULT_MENU_TIMEOUT,
                entries: tuple[MenuEntry, ...] = MENU) -> str:
    """`grub.cfg`: the entries, normal the default; `kernel` and `initrd` are paths on the
    file system with UUID `fs_uuid`."""
    for value in (fs_uuid, kernel, initrd, console_args):
        if any(c in value for c in "'\"\n\\;$"):
            raise BootSetupError(f"refusing a GRUB config value with quoting in it: {value!r}")
    lines = ["# Written by Kiln (recovery.bootsetup) on every boot setup: do not edit.",
             f"set default={entries[0].id}", f"set timeout={timeout}",
             "set timeout_style=menu"]
    serial = serial_unit(console_args)
    if serial:
        lines += [f"serial --unit={serial[0]} --speed={serial[1]}",
                  "terminal_input serial console", "terminal_output serial console"]
    lines += ["insmod part_gpt", "insmod part_msdos", "insmod fat", "insmod ext2",
              f"search --no-floppy --fs-uuid --set=root {fs_uuid}", ""]
    for entry in entries:
        lines += [f"menuentry '{entry.title}' --id {entry.id} --hotkey {entry.hotkey} {{",
                  f"\tlinux {kernel} {kernel_arguments(entry, console_args)}".rstrip(),
                  f"\tinitrd {initrd}", "}"]
    return "\n".join(lines) + "\n"


def install_boot(*, firmware: Firmware, disk: Path, applied: AppliedDisk,
                 esp_mount: Path | None, recovery_mount: Path, kernel: Path, initrd: Path,
                 console_args: str, timeout: int = DEFAULT_MENU_TIMEOUT) -> BootSetup:
    """Make `disk` boot the Kiln kernel `kernel` with `initrd`, from a three-entry menu.

    `applied` is the disk as partitioned (its plan gives the file systems' UUIDs);
    `esp_mount` (UEFI only) and `recovery_mount` are where the caller mounted them."""
    if firmware is Firmware.UEFI:
        if esp_mount is None:
            raise BootSetupError(f"{disk}: a UEFI boot setup needs the ESP mounted")
        return _install_uefi(disk=disk, applied=applied, esp=esp_mount, kernel=kernel,
                             initrd=initrd, console_args=console_args, timeout=timeout)
    if firmware is Firmware.BIOS:
        return _install_bios(disk=disk, applied=applied, recovery=recovery_mount,
                             kernel=kernel, initrd=initrd, console_args=console_args,
                             timeout=timeout)
    raise BootSetupError(f"{disk}: resolve firmware {firmware} to uefi or bios first")


def _fs_uuid(applied: AppliedDisk, role: PartitionRole, disk: Path) -> str:
    partition = applied.plan.partition(role)
    if partition is None:
        raise BootSetupError(f"{disk}: the partition plan has no {role} partition")
    return partition.filesystem_uuid


def _install_uefi(*, disk: Path, applied: AppliedDisk, esp: Path, kernel: Path, initrd: Path,
                  console_args: str, timeout: int) -> BootSetup:
    fs_uuid = _fs_uuid(applied, PartitionRole.ESP, disk)
    target_kernel = place_file(kernel, esp / ESP_KILN_DIR / KERNEL_NAME, disk=disk)
    target_initrd = place_file(initrd, esp / ESP_KILN_DIR / INITRD_NAME, disk=disk)
    loader = esp / FALLBACK_LOADER
    _standalone(loader, fs_uuid=fs_uuid, disk=disk)
    text = grub_config(fs_uuid=fs_uuid, kernel=f"/{ESP_KILN_DIR}/{KERNEL_NAME}",
                       initrd=f"/{ESP_KILN_DIR}/{INITRD_NAME}", console_args=console_args,
                       timeout=timeout)
    config = write_config(esp / "boot" / "grub" / "grub.cfg", text, disk=disk)
    return BootSetup(firmware=Firmware.UEFI, disk=disk, loader=loader, config=config,
                     kernel=target_kernel, initrd=target_initrd, entries=MENU, config_text=text)


def _install_bios(*, disk: Path, applied: AppliedDisk, recovery: Path, kernel: Path,
                  initrd: Path, console_args: str, timeout: int) -> BootSetup:
    fs_uuid = _fs_uuid(applied, PartitionRole.RECOVERY, disk)
    target_kernel = place_file(kernel, recovery / "boot" / KERNEL_NAME, disk=disk)
    target_initrd = place_file(initrd, recovery / "boot" / INITRD_NAME, disk=disk)
    plan = applied.plan
    try:
        install_grub_pc(disk=disk, boot_dir=recovery / "boot", fs_uuid=fs_uuid,
                        first_partition_sector=min(p.start for p in plan.partitions),
                        sector_size=plan.sector_size)
    except GrubPcError as e:
        raise BootSetupError(f"installing GRUB in the MBR failed: {e}") from e
    text = grub_config(fs_uuid=fs_uuid, kernel=f"/boot/{KERNEL_NAME}",
                       initrd=f"/boot/{INITRD_NAME}", console_args=console_args,
                       timeout=timeout)
    config = write_config(recovery / "boot" / "grub" / "grub.cfg", text, disk=disk)
    return BootSetup(firmware=Firmware.BIOS, disk=disk, loader=disk, config=config,
                     kernel=target_kernel, initrd=target_initrd, entries=MENU, config_text=text)


def embedded_config(fs_uuid: str) -> str:
    """The config built into the UEFI loader: find the ESP by UUID, read its grub.cfg."""
    return ("insmod part_gpt\ninsmod part_msdos\ninsmod fat\n"  # before search can see them
            f"search --no-floppy --fs-uuid --set=kiln_esp {fs_uuid}\n"
            'if [ -n "$kiln_esp" ]; then\n'
            "\tset root=$kiln_esp\n\tconfigfile ($kiln_esp)/boot/grub/grub.cfg\n"
            f"else\n\techo 'Kiln: no file system with UUID {fs_uuid}'\nfi\n")


def _standalone(loader: Path, *, fs_uuid: str, disk: Path) -> None:
    """GRUB as one EFI binary with its modules inside (`grub-mkstandalone`): nothing to probe,
    so the ESP need not be mounted where grub-install would look for it."""
    try:
        loader.parent.mkdir(parents=True, exist_ok=True)
        embedded = loader.with_name(".grub-embedded.cfg")
        embedded.write_text(embedded_config(fs_uuid))
    except OSError as e:
        raise BootSetupError(f"{disk}: preparing {loader.parent} failed: {e}") from e
    partial = loader.with_name(f".{loader.name}.partial")
    try:
        _grub_tool(disk, step="building the UEFI fallback loader", argv=[
            "grub-mkstandalone", "--format=x86_64-efi", f"--output={partial}", *_NO_EXTRAS,
            f"boot/grub/grub.cfg={embedded}"])
        _sync(partial)
        os.replace(partial, loader)
    except OSError as e:
        raise BootSetupError(f"{disk}: writing {loader} failed: {e}") from e
    finally:
        embedded.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)


def _grub_tool(disk: Path, *, step: str, argv: list[str | os.PathLike[str]]) -> None:
    try:
        run(argv, timeout=GRUB_TIMEOUT)
    except CommandError as e:
        raise BootSetupError(f"{disk}: {step} failed: {e}") from e


def place_file(source: Path, target: Path, *, disk: Path) -> Path:
    """Copy `source` to `target` (through a temporary name), unless it already is `target`."""
    try:
        if target.exists() and os.path.samefile(source, target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, partial)
        _sync(partial)
        os.replace(partial, target)
    except OSError as e:
        raise BootSetupError(f"{disk}: copying {source} to {target} failed: {e}") from e
    return target


def write_config(path: Path, text: str, *, disk: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        _sync(partial)
        os.replace(partial, path)
    except OSError as e:
        raise BootSetupError(f"{disk}: writing {path} failed: {e}") from e
    return path


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
