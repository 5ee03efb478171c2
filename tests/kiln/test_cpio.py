from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from kiln.cpio import CpioEntry, CpioWriter, newc_archive
from kiln.process import run


def make_tree(root: Path) -> None:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "usr" / "bin" / "tool").chmod(0o755)
    (root / "bin").symlink_to("usr/bin")
    (root / "etc").mkdir()
    (root / "etc" / "odd").write_bytes(b"abc")  # not a multiple of 4: padding


def archive_of(root: Path, mtime: int) -> bytes:
    out = io.BytesIO()
    writer = CpioWriter(out, mtime=mtime)
    writer.add_tree(root)
    writer.add(CpioEntry.char_device("dev/console", 5, 1))
    writer.finish()
    return out.getvalue()


def test_a_tree_archive_is_reproducible_whatever_the_files_timestamps(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    first = archive_of(tmp_path / "a", 1000)
    os.utime(tmp_path / "a" / "etc" / "odd", (5, 5))
    assert archive_of(tmp_path / "a", 1000) == first
    assert archive_of(tmp_path / "a", 2000) != first
    assert len(first) % 4 == 0


@pytest.mark.allow_commands("cpio")
def test_stock_cpio_reads_a_tree_archive(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree")
    data = archive_of(tmp_path / "tree", 1_700_000_000)
    lines = run(["cpio", "-itv", "--quiet"], input=data).text.splitlines()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines]
    assert names == ["bin", "etc", "etc/odd", "usr", "usr/bin", "usr/bin/tool", "dev/console"]
    assert any(line.startswith("crw-------") and "5,   1" in line for line in lines)
    assert any("bin -> usr/bin" in line for line in lines)
    extract = tmp_path / "out"
    extract.mkdir()
    run(["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*"],
        input=data, cwd=extract)
    assert (extract / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((extract / "usr/bin/tool").stat().st_mode) == 0o755
    assert (extract / "etc/odd").read_bytes() == b"abc"


@pytest.mark.allow_commands("cpio")
def test_entries_in_memory_read_back_with_cpio() -> None:
    archive = newc_archive([
        CpioEntry.directory("bin"),
        CpioEntry.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755),
        CpioEntry.symlink("bin/sh", "busybox"),
        CpioEntry.char_device("dev/console", 5, 1),
        CpioEntry.file("odd", b"x" * 5),
    ])
    assert len(archive) % 4 == 0
    listing = run(["cpio", "-t", "-v", "--quiet"], input=archive).text.splitlines()
    assert [line.split()[-1] for line in listing] == [
        "bin", "bin/hello", "busybox", "dev/console", "odd"]
    assert listing[2].startswith("lrwxrwxrwx") and "bin/sh -> busybox" in listing[2]
