"""`kiln image …` end to end through `kiln.cli.main`, as an operator would run it."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.image.commands import parse_size
from kiln.image.reader import ImageReader
from kiln.image.signing import TrustStore
from tests.kiln.image.helpers import flip, silent_flip
from tests.kiln.image.httpserver import running_server

pytestmark = pytest.mark.allow_commands("tar")


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, str]:
    assert main(["image", "keygen", str(tmp_path / "release")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["private"] == str(tmp_path / "release.key")
    assert printed["public"] == str(tmp_path / "release.pub")
    return tmp_path / "release.key", tmp_path / "release.pub", printed["key_id"]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("appliance\n")
    (root / "data").write_bytes(os.urandom(300_000))
    os.symlink("etc/hostname", root / "hostname")
    return root


@pytest.fixture
def image(tmp_path: Path, rootfs: Path, keys: tuple[Path, Path, str],
          capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "demo.upd"
    code = main(["image", "build", str(rootfs), "-o", str(out), "-k", str(keys[0]),
                 "--product", "demo", "--version", "1.2.3", "--build", "4",
                 "--variant", "apu2", "--variant", "apu4", "--frame-size", "64K",
                 "--threads", "2", "--description", "cli test"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"] == str(out)
    assert (printed["product"], printed["version"], printed["build"]) == ("demo", "1.2.3", 4)
    assert printed["frames"] == 5
    assert printed["compressed_size"] < out.stat().st_size
    return out


def test_keygen_refuses_to_overwrite(keys: tuple[Path, Path, str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "keygen", str(tmp_path / "release")]) == 1
    assert "already exists; refusing to overwrite" in capsys.readouterr().err


def test_inspect_prints_the_manifest(image: Path, keys: tuple[Path, Path, str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "inspect", str(image)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["signatures"] == [keys[2]]
    assert shown["manifest"]["version"] == "1.2.3"
    assert shown["manifest"]["variants"] == ["apu2", "apu4"]
    assert shown["manifest"]["description"] == "cli test"
    assert shown["manifest"]["payload"]["frame_size"] == 65536
    assert len(shown["image_id"]) == 64
    assert "verified_by" not in shown
    assert main(["image", "inspect", str(image), "--trust", str(keys[1])]) == 0
    assert json.loads(capsys.readouterr().out)["verified_by"] == keys[2]


def test_verify_a_good_image(image: Path, keys: tuple[Path, Path, str],
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "verify", str(image), "--trust", str(keys[1])]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"OK demo 1.2.3 (build 4): signed by {keys[2]}, 5 frames, ")
    assert captured.err == ""  # no progress line when stderr is not a terminal


def test_verify_names_the_bad_frame(image: Path, keys: tuple[Path, Path, str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    trust = TrustStore.from_paths([keys[1]])
    with ImageReader.open(image, trust) as reader:
        start = reader.payload_offset + reader.manifest.frames[2].offset
        frame = next(reader.frames(start=2)).data
        position = start + silent_flip(frame, reader.manifest.frame_output_size(2))
    image.write_bytes(flip(image.read_bytes(), position))
    assert main(["image", "verify", str(image), "--trust", str(keys[1].parent)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("kiln: error: frame 2: sha256 mismatch")


def test_verify_with_the_wrong_key(image: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "keygen", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main(["image", "verify", str(image), "--trust", str(tmp_path / "other.pub")]) == 1
    assert "none of those keys is trusted" in capsys.readouterr().err


def test_extract(image: Path, rootfs: Path, keys: tuple[Path, Path, str], tmp_path: Path,
                 capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    assert main(["image", "extract", str(image), str(dest), "--trust", str(keys[1])]) == 0
    assert capsys.readouterr().out.startswith("OK demo 1.2.3 (build 4): 5 members, ")
    assert (dest / "data").read_bytes() == (rootfs / "data").read_bytes()
    assert os.readlink(dest / "hostname") == "etc/hostname"


def test_extract_over_http(image: Path, rootfs: Path, keys: tuple[Path, Path, str],
                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with running_server() as server:
        url = server.serve("demo.upd", image.read_bytes())
        assert main(["image", "extract", url, str(dest), "--trust", str(keys[1])]) == 0
    assert capsys.readouterr().out.startswith("OK demo 1.2.3")
    assert (dest / "data").read_bytes() == (rootfs / "data").read_bytes()


def test_inspect_a_file_that_is_not_an_image(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.upd").write_bytes(b"\x00" * 64)
    assert main(["image", "inspect", str(tmp_path / "junk.upd")]) == 1
    assert capsys.readouterr().err.startswith("kiln: error: not a Kiln image")


def test_build_with_a_frame_size_readers_would_refuse(
    rootfs: Path, keys: tuple[Path, Path, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "odd.upd"
    code = main(["image", "build", str(rootfs), "-o", str(out), "-k", str(keys[0]),
                 "--product", "demo", "--version", "1", "--frame-size", "5000"])
    assert code == 1
    assert "payload.frame_size: 5000 must be a multiple of 512" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("text", "size"), [("65536", 65536), ("64K", 65536), ("16M", 16 << 20),
                                            ("1g", 1 << 30), ("8MiB", 8 << 20)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_size_that_is_not_one() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size: '12Q'"):
        parse_size("12Q")


def test_only_the_named_group_is_loaded() -> None:
    from kiln.cli import build_tree

    assert set(build_tree(["-v", "image", "verify"])._groups) == {"image"}
    assert {"image", "recovery", "initramfs", "lab"} <= set(build_tree([])._groups)
    assert {"image", "recovery"} <= set(build_tree(["no-such-command"])._groups)
