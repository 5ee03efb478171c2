"""Disks a unit would have: a test root filesystem on PRIMARY, an empty RECOVERY. (The Kiln
ramdisk and the lab are session fixtures in tests/conftest.py.)"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lab.diskimage import Partition, PlacedPartition, build_disk_image

TEST_ROOT_MARK = "KILN-TEST-ROOT: init reached as pid"
TEST_ROOT_INIT = f"""#!/bin/busybox sh
/bin/busybox echo "{TEST_ROOT_MARK} $$"
/bin/busybox poweroff -f
"""


def make_test_root(root: Path, *, flag: bool) -> Path:
    for directory in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
    init = root / "sbin" / "init"
    init.write_text(TEST_ROOT_INIT)
    init.chmod(0o755)
    if flag:
        (root / "boot.normal").write_text("")
    return root


@dataclass(frozen=True)
class UnitDisk:
    image: Path
    recovery: PlacedPartition
    primary: PlacedPartition


def unit_disk(work: Path, *, flag: bool) -> UnitDisk:
    """A GPT disk with RECOVERY (empty ext4) and PRIMARY (the test root)."""
    root = make_test_root(work / "root", flag=flag)
    recovery, primary = build_disk_image(
        work / "unit.img",
        partitions=[Partition(label="RECOVERY", size_mib=16),
                    Partition(label="PRIMARY", size_mib=24, content=root)],
    )
    return UnitDisk(image=work / "unit.img", recovery=recovery, primary=primary)
