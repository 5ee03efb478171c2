"""`kiln lab profile`: a manufData profile for lab VMs that the model accepts, with the
files' real sizes and hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.manufdata import FileKind, load_manufdata


def _files(tmp_path: Path) -> tuple[Path, Path]:
    ramdisk = tmp_path / "ramdisk"
    ramdisk.mkdir()
    (ramdisk / "vmlinuz").write_bytes(b"kernel" * 1000)
    (ramdisk / "initrd.zst").write_bytes(b"initrd" * 2000)
    image = tmp_path / "app-1.0.upd"
    image.write_bytes(b"image" * 3000)
    return image, ramdisk


def test_the_profile_is_valid_manufdata_with_the_files_hashes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, ramdisk = _files(tmp_path)
    assert main(["lab", "profile", "--image", str(image), "--image-id", "0123456789ab",
                 "--ramdisk", str(ramdisk), "--memory", "2048", "--disk-min", "8G",
                 "--disk-max", "16G", "--recovery", "1G"]) == 0
    body = json.loads(capsys.readouterr().out)
    manufdata = load_manufdata(json.dumps(body["manufdata"]))
    by_kind = {spec.kind: spec for spec in manufdata.files}
    assert by_kind[FileKind.IMAGE].url == "images/0123456789ab.upd"
    assert by_kind[FileKind.INITRD].sha256 == hashlib.sha256(
        (ramdisk / "initrd.zst").read_bytes()).hexdigest()
    assert by_kind[FileKind.KERNEL].size_bytes == 6000
    [variant] = manufdata.variants
    assert variant.memory is not None and variant.memory.size_bytes == 2048 * 1024**2
    assert variant.disks[0].min_size_bytes == 8 * 1024**3
    assert manufdata.layout.recovery_size_bytes == 1024**3


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, ramdisk = _files(tmp_path)
    (ramdisk / "initrd.zst").unlink()
    assert main(["lab", "profile", "--image", str(image), "--image-id", "x",
                 "--ramdisk", str(ramdisk)]) == 2
    assert "initrd.zst is not a file" in capsys.readouterr().err
