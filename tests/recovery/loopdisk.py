"""Loop devices for the recovery tests: a sparse disk attached with `losetup --partscan`
(root only; always detached) and partition plans with repeatable UUIDs."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kiln.manufdata import GIB, MIB, DiskLayout, Firmware
from kiln.process import run
from recovery.partitions import NewUuid, PartitionPlan, TargetDisk, plan_layout

TOOLS = ("losetup", "wipefs", "sfdisk", "mkfs.vfat", "mkfs.ext4", "blkid", "udevadm")
DISK_BYTES = 3 * GIB
LAYOUT = DiskLayout(recovery_size_bytes=300 * MIB, esp_size_bytes=64 * MIB,
                    data_size_bytes=128 * MIB)

AttachLoop = Callable[..., Path]


def uuids(seed: int) -> NewUuid:
    numbers = itertools.count(seed)
    return lambda: uuid.UUID(int=next(numbers) * 0x1111_2222_3333_4444_5555_6666_7777_8887 % 2**128)


def plan_for(device: Path, firmware: Firmware, *, seed: int = 1,
             layout: DiskLayout = LAYOUT, sector_size: int = 512) -> PartitionPlan:
    (plan,) = plan_layout(layout, firmware=firmware, new_uuid=uuids(seed),
                          primary=TargetDisk(name=os.fspath(device), size_bytes=DISK_BYTES,
                                             sector_size=sector_size))
    return plan


@contextmanager
def mounted(node: Path, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", node, where])
    try:
        yield where
    finally:
        run(["umount", where])
