"""GRUB for BIOS on an MBR disk, done the way `grub-bios-setup` does it, without probing.

`grub-install --target=i386-pc` must map the boot directory's partition to a BIOS drive; it
cannot for loop devices (`cannot find a GRUB drive for /dev/loop0p1`) and Debian ships no
separate `grub-bios-setup`. The two steps it runs are simple enough to do here, and doing
them here needs no guess about drives at all. Rules:

- **Modules** are copied from the platform directory (`/usr/lib/grub/i386-pc`) to
  `RECOVERY/boot/grub/i386-pc/` (`*.mod`, `*.lst`), as grub-install does: normal mode loads
  them from the prefix on demand.
- **core.img** is built by `grub-mkimage` with a config that finds RECOVERY by its file-system
  UUID and sets the prefix there (GRUB's rescue parser runs it: plain commands only), and
  is written to the sectors right after the MBR: the gap the partition plan leaves before the
  first partition (1 MiB). It must fit there, or nothing is written.
- **The MBR**: GRUB's `boot.img` for the first 440 bytes, with the sector of core.img (1) at
  0x5c and the hard-disk workaround (0x66: two NOPs) patched in as grub-bios-setup does; the
  disk's own bytes 0x03-0x5a (a BPB, if any) and 440-511 (disk signature, partition table,
  0x55AA) are kept. core.img is written and synced before the MBR that points at it.
- Only 512-byte sectors: BIOS boot code addresses 512-byte sectors.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from kiln.errors import KilnError
from kiln.process import CommandError, run

SECTOR = 512
MBR_CODE_END = 0x1B8  # 440: boot code; then disk signature, partition table, 0x55AA
BPB_START, BPB_END = 0x03, 0x5A
KERNEL_SECTOR_OFFSET = 0x5C
DRIVE_CHECK_OFFSET = 0x66
CORE_MODULES = ("biosdisk", "part_msdos", "ext2", "search_fs_uuid")
GRUB_TIMEOUT = 120.0


class GrubPcError(KilnError):
    """Installing GRUB for BIOS failed; the message names the disk and the step."""


def core_config(fs_uuid: str) -> str:
    """The config built into core.img (rescue parser: no `if`, no menu)."""
    return f"search.fs_uuid {fs_uuid} root\nset prefix=($root)/boot/grub\n"


def boot_sector(*, boot_img: bytes, disk_sector: bytes, core_sector: int = 1) -> bytes:
    """GRUB's MBR for a disk whose first sector is `disk_sector` now."""
    if len(boot_img) != SECTOR or len(disk_sector) != SECTOR:
        raise GrubPcError(f"boot.img and the disk's first sector must be {SECTOR} bytes")
    if disk_sector[510:512] != b"\x55\xaa":
        raise GrubPcError("the disk has no MBR partition table (no 0x55AA signature)")
    mbr = bytearray(boot_img[:MBR_CODE_END]) + bytearray(disk_sector[MBR_CODE_END:])
    mbr[BPB_START:BPB_END] = disk_sector[BPB_START:BPB_END]
    mbr[KERNEL_SECTOR_OFFSET:KERNEL_SECTOR_OFFSET + 8] = struct.pack("<Q", core_sector)
    mbr[DRIVE_CHECK_OFFSET:DRIVE_CHECK_OFFSET + 2] = b"\x90\x90"
    return bytes(mbr)


def install_grub_pc(*, disk: Path, boot_dir: Path, fs_uuid: str, first_partition_sector: int,
                    sector_size: int, platform_dir: Path = Path("/usr/lib/grub/i386-pc")) -> Path:
    """Install GRUB's BIOS boot code on `disk`; its modules under `boot_dir/grub/i386-pc`.
    Returns core.img's path (kept on RECOVERY: it documents what the gap holds)."""
    if sector_size != SECTOR:
        raise GrubPcError(f"{disk}: BIOS boot needs {SECTOR}-byte sectors, not {sector_size}")
    modules = boot_dir / "grub" / "i386-pc"
    try:
        modules.mkdir(parents=True, exist_ok=True)
        for source in sorted(platform_dir.iterdir()):
            if source.suffix in (".mod", ".lst"):
                shutil.copyfile(source, modules / source.name)
        embedded = modules / "load.cfg"
        embedded.write_text(core_config(fs_uuid))
        boot_img = (platform_dir / "boot.img").read_bytes()
    except OSError as e:
        raise GrubPcError(f"{disk}: copying GRUB's modules from {platform_dir} failed: {e}") \
            from e
    core = modules / "core.img"
    try:
        run(["grub-mkimage", "--format=i386-pc", f"--directory={platform_dir}",
             f"--config={embedded}", "--prefix=/boot/grub", f"--output={core}",
             *CORE_MODULES], timeout=GRUB_TIMEOUT)
    except CommandError as e:
        raise GrubPcError(f"{disk}: building core.img failed: {e}") from e
    image = core.read_bytes()
    room = (first_partition_sector - 1) * SECTOR
    if len(image) > room:
        raise GrubPcError(f"{disk}: core.img is {len(image)} bytes, the gap before the first "
                          f"partition only {room}: nothing was written")
    try:
        fd = os.open(disk, os.O_RDWR | os.O_CLOEXEC)
        try:
            mbr = boot_sector(boot_img=boot_img, disk_sector=os.pread(fd, SECTOR, 0))
            os.pwrite(fd, image, SECTOR)
            os.fsync(fd)
            os.pwrite(fd, mbr, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise GrubPcError(f"{disk}: writing GRUB's boot code failed: {e}") from e
    return core
