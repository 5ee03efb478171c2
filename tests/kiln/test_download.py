"""Verified, resumable downloads of plain files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kiln.download import DownloadError, download_verified, partial_path
from kiln.image.source import FileSource


def _file(path: Path, size: int = 9 * 1024 * 1024 + 5) -> tuple[Path, str]:
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_a_file_lands_verified(tmp_path: Path) -> None:
    source_path, sha256 = _file(tmp_path / "vmlinuz")
    size = source_path.stat().st_size
    with FileSource(source_path) as source:
        landed = download_verified(source, tmp_path / "out" / "boot" / "vmlinuz",
                                   sha256=sha256, size=size)
    assert landed.read_bytes() == source_path.read_bytes()
    assert not partial_path(landed).exists()


def test_a_partial_copy_is_resumed_not_trusted(tmp_path: Path) -> None:
    source_path, sha256 = _file(tmp_path / "initrd")
    size = source_path.stat().st_size
    destination = tmp_path / "out" / "initrd"
    destination.parent.mkdir()
    partial_path(destination).write_bytes(source_path.read_bytes()[:5_000_000])
    with FileSource(source_path) as source:
        download_verified(source, destination, sha256=sha256, size=size)
    assert destination.read_bytes() == source_path.read_bytes()

    destination.unlink()  # a partial copy with a flipped byte: caught by the sha256
    broken = bytearray(source_path.read_bytes()[:5_000_000])
    broken[1234] ^= 0xFF
    partial_path(destination).write_bytes(bytes(broken))
    with FileSource(source_path) as source, pytest.raises(DownloadError, match="sha256"):
        download_verified(source, destination, sha256=sha256, size=size)
    assert not destination.exists() and not partial_path(destination).exists()
    with FileSource(source_path) as source:  # the next attempt starts over and succeeds
        download_verified(source, destination, sha256=sha256, size=size)
    assert destination.read_bytes() == source_path.read_bytes()


def test_wrong_sizes_and_hashes_are_refused(tmp_path: Path) -> None:
    source_path, sha256 = _file(tmp_path / "f", size=1000)
    destination = tmp_path / "out" / "f"
    with FileSource(source_path) as source, pytest.raises(DownloadError, match="not the "
                                                                               "expected 999"):
        download_verified(source, destination, sha256=sha256, size=999)
    with FileSource(source_path) as source, pytest.raises(DownloadError, match="sha256"):
        download_verified(source, destination, sha256="0" * 64, size=1000)
    assert not destination.exists() and not partial_path(destination).exists()


def test_a_file_already_in_place_is_kept(tmp_path: Path) -> None:
    source_path, sha256 = _file(tmp_path / "f", size=1000)
    destination = tmp_path / "f-copy"
    destination.write_bytes(source_path.read_bytes())
    before = destination.stat().st_mtime_ns
    with FileSource(source_path) as source:
        download_verified(source, destination, sha256=sha256, size=1000)
    assert destination.stat().st_mtime_ns == before
