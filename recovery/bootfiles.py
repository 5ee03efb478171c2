"""Kiln's boot files from an image: when a restored image carries a newer Kiln kernel and
ramdisk than the unit boots, restore installs them, on both firmwares.

The contract, in an image's root (so the image's signature and frame hashes cover it):
`usr/lib/kiln/boot/boot.json` =
`{"schema": 1, "version": "2.1.0", "kernel": "vmlinuz", "initrd": "initrd.zst",
"kernel_sha256": "…", "initrd_sha256": "…"}`, the two files beside it. Rules:

- **Newer**: the carried version is greater than the installed one (dotted numbers, as image
  versions); an older or equal one is left alone, so restoring an older image never downgrades
  the ramdisk. The installed version is recorded in RECOVERY's `state/boot-files.json`; a unit
  without that record boots the files manufacture placed, of unknown version, and takes any.
- **Where**: UEFI: the ESP's `kiln/` (what GRUB's config and Kiln's NVRAM entries name);
  BIOS: RECOVERY's `boot/` (GRUB's config there). The firmware is the one the unit was
  partitioned for (an ESP in `state/disks.json` means UEFI).
- **Names**: `vmlinuz-<version>-<sha8>` and `initrd-<version>-<sha8>.zst`, a new pair beside
  the old one: the kernel and ramdisk are switched together by one rename, never one at a time
  (a new kernel with the old ramdisk cannot load its modules).
- **Order**, so that a power cut at any instant leaves a pair that boots: both files copied
  (temporary name, fsync, rename) and their sha256 checked against boot.json; GRUB's config
  switched (one rename); on UEFI Kiln's NVRAM entries switched (`ensure_uefi_entries`; while
  an entry is missing, the firmware's fallback loader boots GRUB, already switched); the record
  written; only then the old pair removed. The record comes after the switch, so a cut
  before it makes the next restore do it again (every step is idempotent).
- Failures raise `BootFilesError` naming the step; restore reports it as a warning and keeps
  the installed files (the OS still boots with them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.fsutil import atomic_write_json, fsync_directory
from kiln.image.manifest import version_key
from kiln.manufdata import Firmware
from kiln.process import run
from recovery.bootsetup import (
    ESP_KILN_DIR,
    INITRD_NAME,
    KERNEL_NAME,
    BootSetupError,
    grub_config,
    place_file,
    write_config,
)
from recovery.layout import RecoveryLayout, StateFile
from recovery.partitions import PartitionPlan, PartitionRole
from recovery.uefi_entries import EspLocation, UefiEntriesError, ensure_uefi_entries

log = logging.getLogger(__name__)

IMAGE_BOOT_DIR = "usr/lib/kiln/boot"  # in an image's root
BOOT_JSON = "boot.json"
_SCHEMA = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"\d+(\.\d+)*")


class BootFilesError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class CarriedBootFiles:
    """The Kiln kernel and ramdisk an image carries, as its boot.json describes them."""

    version: str
    kernel: Path
    initrd: Path
    kernel_sha256: str
    initrd_sha256: str

    def names(self) -> tuple[str, str]:
        """The pair's file names in the boot directory: version and content in the name."""
        return (f"vmlinuz-{self.version}-{self.kernel_sha256[:8]}",
                f"initrd-{self.version}-{self.initrd_sha256[:8]}.zst")


@dataclass(frozen=True, kw_only=True)
class InstalledBootFiles:
    """What the unit boots: the record in `state/boot-files.json`."""

    version: str | None  # None: the files manufacture placed, of unknown version
    kernel: str  # file names in the boot directory
    initrd: str


FACTORY_BOOT_FILES = InstalledBootFiles(version=None, kernel=KERNEL_NAME, initrd=INITRD_NAME)


@dataclass(frozen=True, kw_only=True)
class BootTarget:
    """Where the boot files live on this unit, with the file system mounted."""

    firmware: Firmware
    directory: Path  # the kernel and ramdisk: ESP/kiln or RECOVERY/boot
    on_volume: str  # that directory as GRUB sees it on its file system: /kiln or /boot
    config: Path  # grub.cfg
    fs_uuid: str  # the file system GRUB searches for
    esp: EspLocation | None  # UEFI: for the NVRAM entries


def carried_boot_files(root: Path) -> CarriedBootFiles | None:
    """The boot files in an extracted image at `root`, or None when it carries none."""
    directory = root / IMAGE_BOOT_DIR
    path = directory / BOOT_JSON
    if not path.exists():
        return None
    where = f"the image's /{IMAGE_BOOT_DIR}/{BOOT_JSON}"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BootFilesError(f"{where} cannot be read: {e}") from e
    if not isinstance(document, dict) or document.get("schema") != _SCHEMA:
        raise BootFilesError(f"{where}: not a schema {_SCHEMA} document")
    problems: list[str] = []
    version = document.get("version")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        problems.append(f"version {version!r} is not dotted numbers")
    files: dict[str, Path] = {}
    for kind in ("kernel", "initrd"):
        name, digest = document.get(kind), document.get(f"{kind}_sha256")
        if not isinstance(name, str) or "/" in name or not (directory / name).is_file():
            problems.append(f"{kind} {name!r} is not a file beside it")
        else:
            files[kind] = directory / name
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            problems.append(f"{kind}_sha256 {digest!r} is not a sha256")
    if problems:
        raise BootFilesError(f"{where}: " + "; ".join(problems))
    return CarriedBootFiles(version=str(version), kernel=files["kernel"],
                            initrd=files["initrd"], kernel_sha256=document["kernel_sha256"],
                            initrd_sha256=document["initrd_sha256"])


def add_boot_files(root: Path, *, kernel: Path, initrd: Path, version: str) -> Path:
    """Put a Kiln kernel and ramdisk into an image's root with their boot.json (what an image
    build does for a unit that should move to this Kiln); returns boot.json's path."""
    if not _VERSION.fullmatch(version):
        raise BootFilesError(f"boot files version {version!r} is not dotted numbers")
    directory = root / IMAGE_BOOT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for source, name in ((kernel, "vmlinuz"), (initrd, "initrd.zst")):
        shutil.copyfile(source, directory / name)
    path = directory / BOOT_JSON
    path.write_text(json.dumps({
        "schema": _SCHEMA, "version": version, "kernel": "vmlinuz", "initrd": "initrd.zst",
        "kernel_sha256": _sha256(directory / "vmlinuz"),
        "initrd_sha256": _sha256(directory / "initrd.zst")}, indent=2) + "\n")
    return path


def installed_boot_files(layout: RecoveryLayout) -> InstalledBootFiles:
    path = layout.state_file(StateFile.BOOT_FILES)
    try:
        document = json.loads(path.read_text())
        return InstalledBootFiles(version=document["version"], kernel=document["kernel"],
                                  initrd=document["initrd"])
    except FileNotFoundError:
        return FACTORY_BOOT_FILES
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("boot files: %s cannot be read (%s): taken as the factory's", path, e)
        return FACTORY_BOOT_FILES


def is_newer(carried: CarriedBootFiles, installed: InstalledBootFiles) -> bool:
    if installed.version is None or not _VERSION.fullmatch(installed.version):
        return True
    return version_key(carried.version) > version_key(installed.version)


def boot_target(plans: tuple[PartitionPlan, ...], *, recovery: Path,
                esp_mount: Path) -> BootTarget:
    """Where the boot files live, from the plans manufacture applied; the ESP (UEFI) is
    expected at `esp_mount`, RECOVERY at `recovery`."""
    for plan in plans:
        esp = plan.partition(PartitionRole.ESP)
        if esp is not None:
            return BootTarget(firmware=Firmware.UEFI, directory=esp_mount / ESP_KILN_DIR,
                              on_volume=f"/{ESP_KILN_DIR}",
                              config=esp_mount / "boot" / "grub" / "grub.cfg",
                              fs_uuid=esp.filesystem_uuid, esp=EspLocation.from_plan(plan))
    for plan in plans:
        found = plan.partition(PartitionRole.RECOVERY)
        if found is not None:
            return BootTarget(firmware=Firmware.BIOS, directory=recovery / "boot",
                              on_volume="/boot", config=recovery / "boot" / "grub" / "grub.cfg",
                              fs_uuid=found.filesystem_uuid, esp=None)
    raise BootFilesError("state/disks.json names neither an ESP nor RECOVERY")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def install_boot_files(carried: CarriedBootFiles, *, target: BootTarget,
                       layout: RecoveryLayout, console_args: str, efivars: Path | None,
                       efibootmgr: str = "efibootmgr") -> InstalledBootFiles:
    """Switch the unit to `carried` (see the module's order); `efivars` None leaves the NVRAM
    entries as they are (not booted by UEFI)."""
    for source, expected in ((carried.kernel, carried.kernel_sha256),
                             (carried.initrd, carried.initrd_sha256)):
        found = _sha256(source)
        if found != expected:
            raise BootFilesError(f"{source.name} has sha256 {found}, boot.json says {expected}")
    kernel_name, initrd_name = carried.names()
    disk = target.directory
    try:
        for source, name, expected in ((carried.kernel, kernel_name, carried.kernel_sha256),
                                       (carried.initrd, initrd_name, carried.initrd_sha256)):
            placed = place_file(source, target.directory / name, disk=disk)
            if _sha256(placed) != expected:
                raise BootFilesError(f"the copy {placed} does not match its sha256")
        fsync_directory(target.directory)
        write_config(target.config, grub_config(
            fs_uuid=target.fs_uuid, kernel=f"{target.on_volume}/{kernel_name}",
            initrd=f"{target.on_volume}/{initrd_name}", console_args=console_args), disk=disk)
        fsync_directory(target.config.parent)
    except BootSetupError as e:
        raise BootFilesError(str(e)) from e
    if target.esp is not None and efivars is not None:
        try:
            ensure_uefi_entries(esp=target.esp, console_args=console_args, efivars=efivars,
                                efibootmgr=efibootmgr, kernel=kernel_name, initrd=initrd_name)
        except UefiEntriesError as e:
            raise BootFilesError(f"switching the NVRAM entries failed: {e}") from e
    installed = InstalledBootFiles(version=carried.version, kernel=kernel_name,
                                   initrd=initrd_name)
    atomic_write_json(layout.state_file(StateFile.BOOT_FILES),
                      {"version": installed.version, "kernel": kernel_name,
                       "initrd": initrd_name})
    for old in target.directory.iterdir():
        if old.name not in (kernel_name, initrd_name) and \
                old.name.startswith(("vmlinuz", "initrd", ".vmlinuz", ".initrd")):
            old.unlink()
    fsync_directory(target.directory)
    return installed


@contextlib.contextmanager
def mounted_esp(node: Path, mount_point: Path) -> Iterator[Path]:
    """The ESP mounted read-write. Explicit charsets: Debian's kernel defaults vfat to
    iocharset=ascii, a module the ramdisk does not carry (nls_utf8 and nls_cp437 it does)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "vfat", "-o", "iocharset=utf8,codepage=437", node, mount_point],
        timeout=120)
    try:
        yield mount_point
    finally:
        os.sync()
        run(["umount", mount_point], timeout=120)


@dataclass(frozen=True, kw_only=True)
class BootFilesUpdate:
    """Restore's step: the restored image's boot files, when newer, become the unit's."""

    layout: RecoveryLayout
    plans: tuple[PartitionPlan, ...]
    esp_mount: Path  # where to mount the ESP (UEFI)
    console_args: str  # the running kernel's console= arguments: the unit's consoles
    efivars: Path | None  # None: not booted by UEFI, NVRAM left alone
    dev: Path = Path("/dev")

    def __call__(self, root: Path) -> str | None:
        """What was done, or None when the image carries nothing newer."""
        carried = carried_boot_files(root)
        if carried is None:
            return None
        installed = installed_boot_files(self.layout)
        if not is_newer(carried, installed):
            log.info("boot files: the image carries %s; the unit boots %s: kept", carried.version,
                     installed.version)
            return None
        target = boot_target(self.plans, recovery=self.layout.root, esp_mount=self.esp_mount)
        with contextlib.ExitStack() as stack:
            if target.esp is not None:  # UEFI: the ESP boot_target found, by its GUID
                node = self.dev / "disk" / "by-partuuid" / target.esp.partition_uuid.lower()
                stack.enter_context(mounted_esp(node.resolve(), self.esp_mount))
            done = install_boot_files(carried, target=target, layout=self.layout,
                                      console_args=self.console_args, efivars=self.efivars)
        nvram = "" if target.firmware is Firmware.BIOS else \
            ("; NVRAM entries switched" if self.efivars else "; NVRAM left alone (no efivars)")
        return (f"Kiln boot files {installed.version or 'from the factory'} → {done.version} "
                f"({done.kernel}, {done.initrd}) in {target.on_volume} for "
                f"{target.firmware}{nvram}")
