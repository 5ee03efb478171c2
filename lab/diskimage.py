"""Disk images built on the host without root or loop devices: partition table by sfdisk,
ext4 filled from a directory by `mkfs.ext4 -d` at the partition's offset, FAT by mkfs.vfat
and mtools. Tests use them as the disks a unit would have after manufacture or restore.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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


def copy_partition(image: Path, placed: PlacedPartition, target: Path) -> Path:
    """Copy one partition of a raw image to its own file."""
    with image.open("rb") as source, target.open("wb") as sink:
        source.seek(placed.start)
        left = placed.size
        while left:
            block = source.read(min(left, 4 * MIB))
            if not block:
                break
            sink.write(block)
            left -= len(block)
    return target


def ext4_listing(image: Path, placed: PlacedPartition, directory: str, *, work: Path) -> list[str]:
    """The names in `directory` of an ext4 partition, as the guest left it.

    The partition is copied out and its journal replayed (`e2fsck -fy`) first: debugfs alone
    shows the state before the journal, which after a power cut is stale."""
    copy = copy_partition(image, placed, work / f"{placed.partition.label}.ext4")
    run(["e2fsck", "-fy", copy], success_codes=(0, 1, 2), timeout=300)
    listing = run(["debugfs", "-R", f"ls -p {directory}", copy], timeout=60).text
    names = [line.split("/")[5] for line in listing.splitlines() if line.count("/") >= 6]
    return sorted(name for name in names if name not in (".", ".."))


def ext4_read(image: Path, placed: PlacedPartition, path: str, *, work: Path) -> bytes:
    """A file's bytes from an ext4 partition (journal replayed on a copy first)."""
    copy = copy_partition(image, placed, work / f"{placed.partition.label}.ext4")
    run(["e2fsck", "-fy", copy], success_codes=(0, 1, 2), timeout=300)
    return run(["debugfs", "-R", f"cat {path}", copy], timeout=60).stdout
