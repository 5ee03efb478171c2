"""Disk images built on the host without root or loop devices: partition table by sfdisk,
ext4 filled from a directory by `mkfs.ext4 -d` at the partition's offset, FAT by mkfs.vfat
and mtools. Tests use them as the disks a unit would have after manufacture or restore.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from kiln.process import run
from lab.errors import LabError

SECTOR = 512
MIB = 1024 * 1024


class PartitionTable(StrEnum):
    GPT = "gpt"
    MBR = "dos"


class Filesystem(StrEnum):
    EXT4 = "ext4"
    VFAT = "vfat"
    NONE = "none"


@dataclass(frozen=True)
class Partition:
    label: str
    size_mib: int
    filesystem: Filesystem = Filesystem.EXT4
    content: Path | None = None  # a directory whose tree the filesystem starts with
    bootable: bool = False


@dataclass(frozen=True)
class PlacedPartition:
    partition: Partition
    start: int  # bytes
    size: int  # bytes


def _type(table: PartitionTable, filesystem: Filesystem) -> str:
    if filesystem is Filesystem.VFAT:
        return "uefi" if table is PartitionTable.GPT else "c"
    return "linux" if table is PartitionTable.GPT else "83"


def build_disk_image(
    path: Path, *, partitions: Sequence[Partition], table: PartitionTable = PartitionTable.GPT,
    size_mib: int | None = None,
) -> list[PlacedPartition]:
    """Write a raw disk image at `path` with `partitions` made and filled."""
    needed = 2 + sum(p.size_mib for p in partitions)
    total = size_mib or needed
    if total < needed:
        raise LabError(f"{path}: {total} MiB cannot hold {needed} MiB of partitions")
    with path.open("wb") as handle:
        handle.truncate(total * MIB)
    lines = [f"label: {table.value}"]
    for partition in partitions:
        entry = f"size={partition.size_mib}MiB, type={_type(table, partition.filesystem)}"
        if table is PartitionTable.GPT:
            entry += f", name={partition.label}"
        if partition.bootable:
            entry += ", bootable" if table is PartitionTable.MBR else ", attrs=LegacyBIOSBootable"
        lines.append(entry)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path],
        input=("\n".join(lines) + "\n").encode(), timeout=60)
    layout = json.loads(run(["sfdisk", "--json", path], timeout=60).stdout)
    placed = [
        PlacedPartition(partition=partition, start=entry["start"] * SECTOR,
                        size=entry["size"] * SECTOR)
        for partition, entry in zip(partitions, layout["partitiontable"]["partitions"],
                                    strict=True)
    ]
    for item in placed:
        _make_filesystem(path, item)
    return placed


def _make_filesystem(image: Path, placed: PlacedPartition) -> None:
    partition = placed.partition
    if partition.filesystem is Filesystem.EXT4:
        argv: list[str | Path] = ["mkfs.ext4", "-q", "-F", "-L", partition.label,
                                  "-E", f"offset={placed.start}"]
        if partition.content is not None:
            argv += ["-d", partition.content]
        run([*argv, image, f"{placed.size // 1024}k"], timeout=300)
    elif partition.filesystem is Filesystem.VFAT:
        run(["mkfs.vfat", "-n", partition.label, "--offset", str(placed.start // SECTOR),
             image, str(placed.size // 1024)], timeout=300)
        if partition.content is not None:
            sources = sorted(partition.content.iterdir())
            if sources:
                run(["mcopy", "-s", "-i", f"{image}@@{placed.start}", *sources, "::"],
                    timeout=300)


def copy_sparse(source: Path, target: Path, *, start: int = 0, size: int | None = None) -> Path:
    """Copy `size` bytes of `source` from `start` (all of it by default) to `target`, holes
    kept as holes: only the extents that hold data are read (SEEK_DATA/SEEK_HOLE), so a
    mostly empty 4 GiB disk image or partition copies in a moment and costs its data only."""
    with source.open("rb") as src, target.open("wb") as dst:
        end = os.fstat(src.fileno()).st_size if size is None else start + size
        offset = start
        while offset < end:
            try:
                data = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after offset
                    break
                raise
            if data >= end:
                break
            hole = min(os.lseek(src.fileno(), data, os.SEEK_HOLE), end)
            _copy_extent(src, dst, offset=data, length=hole - data, shift=start)
            offset = hole
        dst.truncate(end - start)
    return target


def _copy_extent(src: BinaryIO, dst: BinaryIO, *, offset: int, length: int, shift: int) -> None:
    while length:
        block = os.pread(src.fileno(), min(length, 4 * MIB), offset)
        if not block:
            raise LabError(f"{src.name}: ends early at byte {offset}")
        os.pwrite(dst.fileno(), block, offset - shift)
        offset += len(block)
        length -= len(block)


def copy_partition(image: Path, placed: PlacedPartition, target: Path) -> Path:
    """Copy one partition of a raw image to its own (sparse) file."""
    return copy_sparse(image, target, start=placed.start, size=placed.size)


@dataclass(frozen=True)
class Ext4Copy:
    """One ext4 partition of a disk image copied out with its journal replayed
    (`e2fsck -fy`), as the guest left it: debugfs alone shows the state before the journal,
    which after a power cut is stale. Read as many files from it as needed."""

    path: Path

    @classmethod
    def of(cls, image: Path, placed: PlacedPartition, *, work: Path) -> Ext4Copy:
        copy = copy_partition(image, placed, work / f"{placed.partition.label}.ext4")
        run(["e2fsck", "-fy", copy], success_codes=(0, 1, 2), timeout=300)
        return cls(copy)

    def listing(self, directory: str) -> list[str]:
        """The names in `directory` (none when it does not exist)."""
        listing = run(["debugfs", "-R", f"ls -p {directory}", self.path], timeout=60).text
        names = [line.split("/")[5] for line in listing.splitlines() if line.count("/") >= 6]
        return sorted(name for name in names if name not in (".", ".."))

    def read(self, path: str) -> bytes:
        """A file's bytes (empty when it does not exist: check with `exists`)."""
        return run(["debugfs", "-R", f"cat {path}", self.path], timeout=60).stdout

    def exists(self, path: str) -> bool:
        parent, _, name = path.rstrip("/").rpartition("/")
        return name in self.listing(parent or "/")


def ext4_listing(image: Path, placed: PlacedPartition, directory: str, *, work: Path) -> list[str]:
    """The names in `directory` of an ext4 partition, as the guest left it (`Ext4Copy`)."""
    return Ext4Copy.of(image, placed, work=work).listing(directory)


def ext4_read(image: Path, placed: PlacedPartition, path: str, *, work: Path) -> bytes:
    """A file's bytes from an ext4 partition, as the guest left it (`Ext4Copy`)."""
    return Ext4Copy.of(image, placed, work=work).read(path)
