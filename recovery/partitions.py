"""The disk layout as a plan: which partitions go where, decided before any disk is touched.

`plan_layout` turns manufData's `DiskLayout`, the firmware the unit booted with and the
target disks' sizes into one frozen `PartitionPlan` per disk. It does no I/O; applying a plan
is `recovery.partitioning`. Rules:

- **Table.** UEFI → GPT with an ESP (vfat, label `KILN-ESP`) first; BIOS → MBR (msdos) with
  RECOVERY bootable and no ESP. Then RECOVERY, PRIMARY and DATA (ext4, labels `RECOVERY`,
  `PRIMARY`, `DATA`), in that order. `recovery_disk: separate` → the ESP and RECOVERY on the
  recovery disk, PRIMARY and DATA on the primary disk: two plans, each with its own table.
- **Alignment.** Every partition starts and ends on a 1 MiB boundary (`ALIGNMENT_BYTES`); the
  first starts at 1 MiB, which is also the BIOS gap after the MBR (room for a boot loader's
  core image) and leaves room for GPT's primary header. GPT's backup header and entries at
  the end of the disk stay free. Fixed sizes are rounded up to whole MiB.
- **Sizes.** ESP and RECOVERY have their manufData sizes. PRIMARY takes the rest of its disk
  unless `primary_size_bytes` is set. `data_size_bytes`: None → no DATA; 0 → DATA takes the
  rest (PRIMARY then has a size); > 0 → DATA of that size right after PRIMARY. What a "rest"
  leaves must be at least `MIN_PRIMARY_BYTES` for PRIMARY and one MiB for DATA.
- **Identity.** Every unit gets fresh identifiers from the caller's `new_uuid` factory (tests
  pass a deterministic one): the disk id, each GPT partition's unique GUID and each file
  system's UUID (a vfat volume id is the low 32 bits). Identifiers are kept in the form
  `lsblk`/`sfdisk` report them, so a read-back compares strings.
- **MBR limit.** An MBR table addresses 2**32 sectors (2 TiB with 512-byte sectors): on a
  larger BIOS disk a "rest" ends there, and fixed sizes beyond it are refused.
- **Refusal.** A disk too small for its part of the layout, or a layout MBR cannot address,
  raises `LayoutError` naming the disk, its size and what the layout needs.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kiln.errors import KilnError
from kiln.manufdata import (
    MIB,
    MIN_PRIMARY_BYTES,
    DiskLayout,
    DiskRole,
    Firmware,
    RecoveryDisk,
)
from recovery.layout import DATA_LABEL, PRIMARY_LABEL, RECOVERY_LABEL

ALIGNMENT_BYTES = MIB
ESP_LABEL = "KILN-ESP"
ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS_TYPE_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MBR_LINUX_TYPE = "83"
GPT_ENTRIES_BYTES = 128 * 128  # the partition entry array, at both ends of the disk
MBR_MAX_SECTORS = 2**32  # MBR addresses partitions with 32-bit sector numbers

NewUuid = Callable[[], uuid.UUID]


class LayoutError(KilnError):
    """The layout does not fit a disk, found before the disk is touched."""


class TableType(enum.StrEnum):
    GPT = "gpt"
    MSDOS = "msdos"  # MBR; "dos" in sfdisk's and lsblk's words


class PartitionRole(enum.StrEnum):
    ESP = "esp"
    RECOVERY = "recovery"
    PRIMARY = "primary"
    DATA = "data"


class Filesystem(enum.StrEnum):
    VFAT = "vfat"
    EXT4 = "ext4"


_LABELS = {PartitionRole.ESP: ESP_LABEL, PartitionRole.RECOVERY: RECOVERY_LABEL,
           PartitionRole.PRIMARY: PRIMARY_LABEL, PartitionRole.DATA: DATA_LABEL}


@dataclass(frozen=True, kw_only=True)
class TargetDisk:
    """A disk the layout goes on, as the hardware inventory found it."""

    name: str  # how errors name it, e.g. /dev/sda
    size_bytes: int
    sector_size: int = 512

    @property
    def sectors(self) -> int:
        return self.size_bytes // self.sector_size


@dataclass(frozen=True, kw_only=True)
class PlannedPartition:
    number: int  # 1-based, as the kernel numbers partition nodes
    role: PartitionRole
    start: int  # first sector (logical sectors of the plan's disk)
    end: int  # last sector, inclusive
    filesystem: Filesystem
    label: str  # file-system label; on GPT also the partition name
    type_guid: str | None  # GPT partition type; None on MBR
    mbr_type: str | None  # MBR type byte as sfdisk prints it; None on GPT
    partition_uuid: str  # GPT: the unique partition GUID; MBR: <disk id>-<NN>
    filesystem_uuid: str  # as blkid prints it: ext4 a UUID, vfat XXXX-XXXX
    bootable: bool = False  # the MBR active flag

    @property
    def sectors(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, kw_only=True)
class PartitionPlan:
    """Everything that will be on one disk: the table and its partitions, in order."""

    disk: str
    disk_role: DiskRole  # primary or recovery
    table: TableType
    sector_size: int
    disk_sectors: int
    disk_id: str  # GPT: the disk GUID; MBR: 8 hex digits (lower case, as lsblk shows them)
    partitions: tuple[PlannedPartition, ...]

    def partition(self, role: PartitionRole) -> PlannedPartition | None:
        return next((p for p in self.partitions if p.role is role), None)

    def size_bytes(self, partition: PlannedPartition) -> int:
        return partition.sectors * self.sector_size


def node_name(disk: str, number: int) -> str:
    """The kernel's name for partition `number` of `disk` (a name, not a path): a disk whose
    name ends in a digit gets a `p` between (loop0p1, nvme0n1p1, mmcblk0p1), others none
    (sda1, vda1)."""
    return f"{disk}{'p' if disk[-1:].isdigit() else ''}{number}"


def plan_layout(layout: DiskLayout, *, firmware: Firmware, primary: TargetDisk,
                recovery: TargetDisk | None = None,
                new_uuid: NewUuid) -> tuple[PartitionPlan, ...]:
    """One plan per disk: the primary disk's first, then the separate recovery disk's.

    `firmware` is what the unit booted with (uefi or bios; the caller resolves `auto` from
    /sys/firmware/efi). `recovery` is required exactly when `layout.recovery_disk` is
    separate."""
    if firmware is Firmware.AUTO:
        raise ValueError("resolve firmware 'auto' to uefi or bios before planning")
    layout = dataclasses.replace(layout, firmware=firmware)
    separate = layout.recovery_disk is RecoveryDisk.SEPARATE
    if separate != (recovery is not None):
        raise LayoutError(f"layout.recovery_disk is {layout.recovery_disk}: expected "
                          f"{'a' if separate else 'no'} separate recovery disk")
    boot_roles = ([PartitionRole.ESP] if firmware is Firmware.UEFI else []) + \
        [PartitionRole.RECOVERY]
    os_roles = [PartitionRole.PRIMARY] + \
        ([PartitionRole.DATA] if layout.data_size_bytes is not None else [])
    if recovery is None:
        return (_plan_disk(layout, disk=primary, disk_role=DiskRole.PRIMARY,
                           roles=boot_roles + os_roles, new_uuid=new_uuid),)
    return (_plan_disk(layout, disk=primary, disk_role=DiskRole.PRIMARY, roles=os_roles,
                       new_uuid=new_uuid),
            _plan_disk(layout, disk=recovery, disk_role=DiskRole.RECOVERY, roles=boot_roles,
                       new_uuid=new_uuid))


def _plan_disk(layout: DiskLayout, *, disk: TargetDisk, disk_role: DiskRole,
               roles: list[PartitionRole], new_uuid: NewUuid) -> PartitionPlan:
    if disk.sector_size <= 0 or ALIGNMENT_BYTES % disk.sector_size:
        raise LayoutError(f"disk {disk.name}: sector size {disk.sector_size} does not divide "
                          f"the {ALIGNMENT_BYTES}-byte alignment")
    need = layout.minimum_disk_bytes(disk_role)
    if disk.size_bytes < need:
        raise LayoutError(_too_small(disk, role=disk_role, need=need, layout=layout))
    table = TableType.GPT if layout.firmware is Firmware.UEFI else TableType.MSDOS
    align = ALIGNMENT_BYTES // disk.sector_size
    backup = 1 + _ceil(GPT_ENTRIES_BYTES, disk.sector_size) if table is TableType.GPT else 0
    # One past the last sector a partition may use, rounded down to the alignment.
    limit = (disk.sectors - backup) // align * align
    if table is TableType.MSDOS:
        limit = min(limit, MBR_MAX_SECTORS // align * align)
    sizes = _sizes(layout, roles=roles, align=align, sector_size=disk.sector_size)
    rest = limit - align - sum(size for size in sizes.values() if size is not None)
    floor = {PartitionRole.PRIMARY: MIN_PRIMARY_BYTES, PartitionRole.DATA: ALIGNMENT_BYTES}
    takes_rest = [role for role, size in sizes.items() if size is None]
    least = sum(_ceil(floor[role], disk.sector_size) for role in takes_rest)
    if rest < least:
        short = (least - rest) * disk.sector_size
        if limit * disk.sector_size < disk.size_bytes - ALIGNMENT_BYTES and \
                table is TableType.MSDOS:
            raise LayoutError(
                f"disk {disk.name} ({disk.size_bytes} bytes): an MBR (BIOS) table addresses "
                f"only its first {limit * disk.sector_size} bytes, {short} bytes too few for "
                "the layout")
        raise LayoutError(_too_small(disk, role=disk_role, need=need + short, layout=layout))
    for role in takes_rest:
        sizes[role] = rest
    disk_uuid = new_uuid()
    disk_id = str(disk_uuid) if table is TableType.GPT else f"{disk_uuid.int & 0xFFFFFFFF:08x}"
    partitions: list[PlannedPartition] = []
    start = align
    for number, role in enumerate(roles, start=1):
        size = sizes[role]
        assert size is not None
        partitions.append(_partition(number=number, role=role, start=start, sectors=size,
                                     table=table, disk_id=disk_id, new_uuid=new_uuid))
        start += size
    return PartitionPlan(disk=disk.name, disk_role=disk_role, table=table,
                         sector_size=disk.sector_size, disk_sectors=disk.sectors,
                         disk_id=disk_id, partitions=tuple(partitions))


def _sizes(layout: DiskLayout, *, roles: list[PartitionRole], align: int,
           sector_size: int) -> dict[PartitionRole, int | None]:
    """Sectors per role, rounded up to the alignment; None: takes the rest."""
    wanted = {PartitionRole.ESP: layout.esp_size_bytes,
              PartitionRole.RECOVERY: layout.recovery_size_bytes,
              PartitionRole.PRIMARY: layout.primary_size_bytes,
              PartitionRole.DATA: layout.data_size_bytes or None}
    sizes: dict[PartitionRole, int | None] = {}
    for role in roles:
        size = wanted[role]
        sizes[role] = None if size is None else _ceil(_ceil(size, sector_size), align) * align
    if list(sizes.values()).count(None) > 1:
        raise LayoutError("PRIMARY and DATA cannot both take the rest of the disk")
    return sizes


def _ceil(value: int, unit: int) -> int:
    return -(-value // unit)


def _partition(*, number: int, role: PartitionRole, start: int, sectors: int,
               table: TableType, disk_id: str, new_uuid: NewUuid) -> PlannedPartition:
    gpt = table is TableType.GPT
    esp = role is PartitionRole.ESP
    filesystem = Filesystem.VFAT if esp else Filesystem.EXT4
    part_uuid = str(new_uuid()) if gpt else f"{disk_id}-{number:02x}"
    fs_uuid = new_uuid()
    return PlannedPartition(
        number=number, role=role, start=start, end=start + sectors - 1, filesystem=filesystem,
        label=_LABELS[role],
        type_guid=(ESP_TYPE_GUID if esp else LINUX_FS_TYPE_GUID) if gpt else None,
        mbr_type=None if gpt else MBR_LINUX_TYPE,
        partition_uuid=part_uuid,
        filesystem_uuid=_vfat_id(fs_uuid) if filesystem is Filesystem.VFAT else str(fs_uuid),
        bootable=not gpt and role is PartitionRole.RECOVERY)


def _vfat_id(value: uuid.UUID) -> str:
    low = f"{value.int & 0xFFFFFFFF:08X}"
    return f"{low[:4]}-{low[4:]}"


def _too_small(disk: TargetDisk, *, role: DiskRole, need: int, layout: DiskLayout) -> str:
    parts = ", ".join(f"{name} {size}" for name, size in _describe(layout, role))
    return (f"disk {disk.name} ({disk.size_bytes} bytes) is too small for the {role} disk of "
            f"the layout ({parts}): it needs at least {need} bytes")


def _describe(layout: DiskLayout, role: DiskRole) -> Iterator[tuple[str, str]]:
    same = layout.recovery_disk is RecoveryDisk.SAME
    if role is DiskRole.RECOVERY or same:
        if layout.firmware is Firmware.UEFI:
            yield "ESP", f"{layout.esp_size_bytes} bytes"
        yield "RECOVERY", f"{layout.recovery_size_bytes} bytes"
    if role is DiskRole.PRIMARY:
        yield "PRIMARY", (f"{layout.primary_size_bytes} bytes" if layout.primary_size_bytes
                          else f"the rest, at least {MIN_PRIMARY_BYTES} bytes")
        if layout.data_size_bytes is not None:
            yield "DATA", (f"{layout.data_size_bytes} bytes" if layout.data_size_bytes
                           else "the rest")
