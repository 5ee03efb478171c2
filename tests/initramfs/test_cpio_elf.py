from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from initramfs.cpio import CpioWriter, DeviceNode
from initramfs.elf import read_deps


def make_tree(root: Path) -> None:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "usr" / "bin" / "tool").chmod(0o755)
    (root / "bin").symlink_to("usr/bin")
    (root / "etc").mkdir()
    (root / "etc" / "odd").write_bytes(b"abc")  # not a multiple of 4: padding


def archive(root: Path, mtime: int) -> bytes:
    out = io.BytesIO()
    writer = CpioWriter(out, mtime=mtime)
    writer.add_tree(root)
    writer.add_device(DeviceNode("dev/console", stat.S_IFCHR | 0o600, 5, 1))
    writer.finish()
    return out.getvalue()


def test_the_archive_is_reproducible_whatever_the_files_timestamps(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    first = archive(tmp_path / "a", 1000)
    os.utime(tmp_path / "a" / "etc" / "odd", (5, 5))
    assert archive(tmp_path / "a", 1000) == first
    assert archive(tmp_path / "a", 2000) != first


@pytest.mark.allow_commands("cpio")
def test_stock_cpio_reads_the_archive(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree")
    data = archive(tmp_path / "tree", 1_700_000_000)
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True)
    lines = listing.stdout.decode().splitlines()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines]
    assert names == ["bin", "etc", "etc/odd", "usr", "usr/bin", "usr/bin/tool", "dev/console"]
    assert any(line.startswith("crw-------") and "5,   1" in line for line in lines)
    assert any("bin -> usr/bin" in line for line in lines)
    extract = tmp_path / "out"
    extract.mkdir()
    subprocess.run(["cpio", "-id", "--no-absolute-filenames", "--nonmatching", "dev/*"],
                   input=data, cwd=extract, capture_output=True, check=True)
    assert (extract / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (extract / "etc/odd").read_bytes() == b"abc"


def test_elf_dependencies_of_a_real_binary() -> None:
    deps = read_deps(Path("/usr/bin/tar"))
    assert deps is not None
    assert "libc.so.6" in deps.needed


def test_a_script_is_not_elf(tmp_path: Path) -> None:
    script = tmp_path / "s"
    script.write_bytes(b"\x7fELF" + bytes([1, 1]) + b"\x00" * 58)  # 32-bit: not ours
    assert read_deps(script) is None
