"""Disks, from `/sys/block` (no lsblk: sysfs has every attribute validation needs).

Left out: loop, ram, zram, dm-, md, sr, fd and nbd devices, eMMC boot areas
(`mmcblkNbootM`), hidden NVMe multipath paths (`hidden` = 1) and partitions. Values:

- `size_bytes` is `size` * 512 (the kernel counts 512-byte sectors whatever the disk's own).
- `serial`: `device/serial` (NVMe, some SCSI), `serial` (virtio), the SCSI unit serial VPD
  page (`device/vpd_pg80`: SATA and SAS), then the `wwid`; "" when none is readable.
- `transport` comes from the resolved sysfs path of the disk, never from its name: a `usbN`
  component makes it usb even when the disk behind the bridge is SATA (a bridge hides the
  disk's real interface, and erase or secure-erase through one can brick it); then `nvme`,
  `virtio*`, `mmc*`, `ataN` (sata), SAS ports and end devices (sas); anything else unknown.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from kiln.sysfs import read_attr, read_flag

SECTOR_BYTES = 512
_SKIPPED = re.compile(r"^(loop|ram|zram|dm-|md|sr|fd|nbd)|^mmcblk\d+boot\d+$")
_VPD_HEADER_BYTES = 4


class DiskTransport(enum.StrEnum):
    NVME = "nvme"
    SATA = "sata"
    SAS = "sas"
    VIRTIO = "virtio"
    USB = "usb"
    MMC = "mmc"
    UNKNOWN = "unknown"


_TRANSPORT_RULES = (  # in order: a USB bridge wins over what is behind it
    (re.compile(r"^usb\d+$"), DiskTransport.USB),
    (re.compile(r"^nvme(\d+n\d+)?$"), DiskTransport.NVME),
    (re.compile(r"^virtio\d+$"), DiskTransport.VIRTIO),
    (re.compile(r"^mmc"), DiskTransport.MMC),
    (re.compile(r"^ata\d+$"), DiskTransport.SATA),
    (re.compile(r"^(end_device|port|expander)-"), DiskTransport.SAS),
)


@dataclass(frozen=True, kw_only=True)
class Disk:
    name: str  # sda, nvme0n1, vda
    path: str  # /dev/NAME
    sysfs_path: str  # the resolved device path below /sys, e.g. /sys/devices/pci0000:00/…
    size_bytes: int
    model: str
    vendor: str
    serial: str
    transport: DiskTransport
    rotational: bool
    removable: bool
    read_only: bool


def transport_of(device_path: Path) -> DiskTransport:
    """The transport read off a disk's resolved sysfs path (parts below `sys/devices`): the
    first rule that one of its parts matches."""
    for pattern, transport in _TRANSPORT_RULES:
        if any(pattern.match(part) for part in device_path.parts):
            return transport
    return DiskTransport.UNKNOWN


def _vpd_serial(path: Path) -> str:
    try:
        page = path.read_bytes()
    except OSError:
        return ""
    return page[_VPD_HEADER_BYTES:].decode("ascii", errors="replace").strip(" \0")


def _serial(block: Path) -> str:
    for candidate in (block / "device/serial", block / "serial"):
        if value := read_attr(candidate):
            return value
    if value := _vpd_serial(block / "device/vpd_pg80"):
        return value
    return read_attr(block / "wwid") or read_attr(block / "device/wwid") or ""


def read_disk(root: Path, block: Path) -> Disk:
    """One `/sys/block/NAME` entry (not filtered)."""
    resolved = block.resolve()
    sys_root = (root / "sys").resolve()
    below_sys = resolved.relative_to(sys_root) if resolved.is_relative_to(sys_root) \
        else resolved
    sectors = read_attr(block / "size") or "0"
    return Disk(name=block.name, path=f"/dev/{block.name}",
                sysfs_path=f"/sys/{below_sys}" if below_sys is not resolved else str(resolved),
                size_bytes=int(sectors) * SECTOR_BYTES if sectors.isdigit() else 0,
                model=read_attr(block / "device/model") or "",
                vendor=read_attr(block / "device/vendor") or "",
                serial=_serial(block),
                transport=transport_of(below_sys),
                rotational=read_flag(block / "queue/rotational"),
                removable=read_flag(block / "removable"),
                read_only=read_flag(block / "ro"))


def is_disk(block: Path) -> bool:
    return not (_SKIPPED.match(block.name) or (block / "partition").exists()
                or read_flag(block / "hidden"))


def read_disks(root: Path = Path("/")) -> tuple[Disk, ...]:
    directory = root / "sys/block"
    if not directory.is_dir():
        return ()
    return tuple(read_disk(root, block) for block in sorted(directory.iterdir())
                 if is_disk(block))
