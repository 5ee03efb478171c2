"""The host-side disk image helpers: sparse copies and reading ext4 as the guest left it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.diskimage import MIB, Ext4Copy, Partition, build_disk_image, copy_sparse


def test_a_sparse_copy_keeps_the_bytes_and_the_holes(tmp_path: Path) -> None:
    source = tmp_path / "disk.img"
    with source.open("wb") as handle:
        handle.truncate(64 * MIB)
        for offset, text in ((0, b"head"), (5 * MIB + 7, b"middle"), (64 * MIB - 3, b"end")):
            handle.seek(offset)
            handle.write(text)
    whole = copy_sparse(source, tmp_path / "whole.img")
    assert whole.read_bytes() == source.read_bytes()
    assert whole.stat().st_blocks * 512 < 4 * MIB  # the holes stayed holes

    part = copy_sparse(source, tmp_path / "part.img", start=5 * MIB, size=MIB)
    expected = source.read_bytes()[5 * MIB:6 * MIB]
    assert part.stat().st_size == MIB
    assert part.read_bytes() == expected and b"middle" in expected


@pytest.mark.allow_commands("sfdisk", "mkfs.ext4", "e2fsck", "debugfs")
def test_an_ext4_copy_lists_reads_and_knows_what_is_missing(tmp_path: Path) -> None:
    content = tmp_path / "content"
    (content / "state").mkdir(parents=True)
    (content / "state" / "history.json").write_text('{"attempts": 1}\n')
    disk = tmp_path / "disk.img"
    (placed,) = build_disk_image(disk, partitions=[Partition(label="RECOVERY", size_mib=16,
                                                            content=content)])
    copy = Ext4Copy.of(disk, placed, work=tmp_path)
    assert copy.listing("/state") == ["history.json"]
    assert copy.read("/state/history.json") == b'{"attempts": 1}\n'
    assert copy.exists("/state/history.json") and copy.exists("/state")
    assert not copy.exists("/state/restore-journal.json")
    assert copy.listing("/nowhere") == []
