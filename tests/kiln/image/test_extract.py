"""Build, verify and extract with the real GNU tar and zstd; hostile archives go nowhere."""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest

from kiln.image.builder import ImageSpec, build_image
from kiln.image.errors import FrameError, ImageError, UnsafeArchiveError
from kiln.image.extract import extract
from kiln.image.reader import ImageReader
from kiln.image.signing import SigningKey, TrustStore
from kiln.process import run
from tests.kiln.image.helpers import (
    CREATED,
    END,
    FRAME_SIZE,
    differences,
    entry,
    flip,
    header_block,
    make_image_from_payload,
    make_rich_tree,
    members,
    padded,
    pax_block,
    random_files,
    silent_flip,
    snapshot,
    tar_bytes,
    tar_of_files,
    with_field,
)

pytestmark = pytest.mark.allow_commands("tar")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners, devices and trusted.* "
                                "xattrs need root")

SPEC = ImageSpec(product="demo", version="2.1.0", build=7, variants=("*",),
                 frame_size=FRAME_SIZE, created=CREATED)


@pytest.fixture
def rich_image(tmp_path: Path, signing_key: SigningKey) -> tuple[Path, Path]:
    source = tmp_path / "rootfs"
    make_rich_tree(source)
    image = tmp_path / "rich.upd"
    build_image(source, image, spec=SPEC, keys=[signing_key])
    return source, image


@needs_root
def test_round_trip_reproduces_the_tree(rich_image: tuple[Path, Path], tmp_path: Path,
                                        trust: TrustStore) -> None:
    source, image = rich_image
    dest = tmp_path / "dest"
    dest.mkdir()
    with ImageReader.open(image, trust) as reader:
        assert len(reader.manifest.frames) > 1
        reader.verify()
        result = extract(reader, dest)
    expected = snapshot(source)
    assert differences(expected, snapshot(dest)) == []
    assert result.members == len(expected)
    assert result.payload_bytes == reader.manifest.payload_size
    # The properties a careless copy loses, spelled out (the snapshot covers them all):
    passwd = (dest / "usr/bin/passwd").stat()
    assert passwd.st_mode & 0o7777 == 0o4755
    assert passwd.st_ino == (dest / "usr/bin/passwd.hard").stat().st_ino
    assert passwd.st_ino == (dest / "srv/passwd.hard2").stat().st_ino
    assert os.readlink(dest / "usr/bin/chpasswd") == "/usr/bin/passwd"
    note = (dest / "home/op/notes.txt").stat()
    assert (note.st_uid, note.st_gid) == (1234, 5678)
    assert (dest / "home/op").stat().st_mode & 0o7777 == 0o700
    assert os.getxattr(dest / "home/op/notes.txt", "trusted.kiln.overlay") == b"\x00\x01binary"
    assert os.getxattr(dest / "usr/bin/ping", "security.capability")
    assert os.major((dest / "dev/sda").stat().st_rdev) == 8


@needs_root
@pytest.mark.allow_commands("tar", "zstd")
def test_stock_zstd_and_tar_read_the_image(rich_image: tuple[Path, Path], tmp_path: Path,
                                           trust: TrustStore) -> None:
    source, image = rich_image
    payload = run(["zstd", "-dc", image]).stdout
    with ImageReader.open(image, trust) as reader:
        assert payload == b"".join(reader.payload())
    listing = run(["tar", "-t"], input=payload).text.splitlines()
    assert "./usr/bin/passwd" in listing
    assert "./home/op/notes.txt" in listing
    assert f"./long/{'d' * 120}/{'f' * 150}" in listing
    assert len(listing) == len(snapshot(source))
    stock = tmp_path / "stock"
    stock.mkdir()
    run(["tar", "-x", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-p",
         "-C", stock], input=payload)
    assert differences(snapshot(source), snapshot(stock)) == []


def test_extract_needs_an_existing_directory(tmp_path: Path, signing_key: SigningKey,
                                             trust: TrustStore) -> None:
    image = make_image_from_payload(tar_bytes(entry("a", b"x")), signing_key).write(
        tmp_path / "a.upd")
    with (
        ImageReader.open(image, trust) as reader,
        pytest.raises(ImageError, match="missing is not a directory"),
    ):
        extract(reader, tmp_path / "missing")


@pytest.mark.parametrize("index", [1, 3])
def test_extraction_stops_before_a_bad_frame_reaches_tar(
    tmp_path: Path, signing_key: SigningKey, trust: TrustStore, index: int
) -> None:
    payload, placed = tar_of_files(random_files([30_000] * 12))
    image = make_image_from_payload(payload, signing_key, FRAME_SIZE)
    assert len(image.frames) == 6
    position = image.frame_start(index) + silent_flip(
        image.frames[index], image.manifest.frame_output_size(index))
    path = tmp_path / "bad.upd"
    path.write_bytes(flip(image.data, position))
    dest = tmp_path / "dest"
    dest.mkdir()
    with ImageReader.open(path, trust) as reader, pytest.raises(FrameError) as caught:
        extract(reader, dest)
    assert caught.value.index == index
    assert f"frame {index}" in str(caught.value)
    boundary = index * FRAME_SIZE
    later = [p for p in placed.values() if p.start >= boundary]
    assert later, "some members must lie wholly in or after the bad frame"
    for member in later:
        assert not (dest / member.name).exists(), member.name
    for member in placed.values():  # whatever tar wrote is the original bytes, never changed
        if (dest / member.name).exists():
            assert member.data.startswith((dest / member.name).read_bytes())


def test_a_payload_that_ends_early_is_refused(tmp_path: Path, signing_key: SigningKey,
                                              trust: TrustStore) -> None:
    payload = members(entry("a", b"x" * 3000))
    image = make_image_from_payload(payload, signing_key).write(tmp_path / "a.upd")
    dest = tmp_path / "dest"
    dest.mkdir()
    with (
        ImageReader.open(image, trust) as reader,
        pytest.raises(UnsafeArchiveError, match="without its end-of-archive marker"),
    ):
        extract(reader, dest)


def test_tar_failing_is_an_image_error_with_tars_message(tmp_path: Path,
                                                         signing_key: SigningKey,
                                                         trust: TrustStore) -> None:
    payload = tar_bytes(entry("h", kind=tarfile.LNKTYPE, linkname="no-such-file"))
    image = make_image_from_payload(payload, signing_key).write(tmp_path / "a.upd")
    dest = tmp_path / "dest"
    dest.mkdir()
    with (
        ImageReader.open(image, trust) as reader,
        pytest.raises(ImageError, match=r"extracting into .*dest failed") as caught,
    ):
        extract(reader, dest)
    assert "no-such-file" in str(caught.value)
    assert "tar --extract" in str(caught.value)


# --- hostile archives, extracted for real ----------------------------------------------------


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    """DEST, and a directory outside it that must stay empty."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    return dest, outside


def extract_payload(payload: bytes, dest: Path, key: SigningKey, trust: TrustStore,
                    tmp_path: Path) -> None:
    image = make_image_from_payload(payload, key).write(tmp_path / "hostile.upd")
    with ImageReader.open(image, trust) as reader:
        extract(reader, dest)


def nothing_outside(outside: Path, dest: Path) -> None:
    assert list(outside.iterdir()) == []
    assert not any(p.name == "evil" for p in dest.rglob("*"))


def test_absolute_member_path(arena: tuple[Path, Path], tmp_path: Path,
                              signing_key: SigningKey, trust: TrustStore) -> None:
    dest, outside = arena
    name = f"{outside}/evil"
    payload = tar_bytes(entry("fine", b"ok"), entry(name, b"x"))
    message = re.escape(f"refusing member '{name}': absolute path")
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_payload(payload, dest, signing_key, trust, tmp_path)
    nothing_outside(outside, dest)


def test_dot_dot_member_path(arena: tuple[Path, Path], tmp_path: Path,
                             signing_key: SigningKey, trust: TrustStore) -> None:
    dest, outside = arena
    payload = tar_bytes(entry("../outside/evil", b"x"))
    with pytest.raises(UnsafeArchiveError, match=r"refusing member '\.\./outside/evil': '\.\.'"):
        extract_payload(payload, dest, signing_key, trust, tmp_path)
    nothing_outside(outside, dest)


def test_symlink_escape(arena: tuple[Path, Path], tmp_path: Path, signing_key: SigningKey,
                        trust: TrustStore) -> None:
    dest, outside = arena
    payload = tar_bytes(entry("a", kind=tarfile.SYMTYPE, linkname=str(outside)),
                        entry("a/evil", b"x"))
    with pytest.raises(UnsafeArchiveError,
                       match="refusing member 'a/evil': it goes through 'a'"):
        extract_payload(payload, dest, signing_key, trust, tmp_path)
    nothing_outside(outside, dest)


def test_hard_link_outside(arena: tuple[Path, Path], tmp_path: Path, signing_key: SigningKey,
                           trust: TrustStore) -> None:
    dest, _ = arena
    secret = tmp_path / "secret"
    secret.write_text("secret")
    payload = tar_bytes(entry("h", kind=tarfile.LNKTYPE, linkname="../secret"))
    with pytest.raises(UnsafeArchiveError, match=r"refusing member 'h': '\.\.' in path"):
        extract_payload(payload, dest, signing_key, trust, tmp_path)
    assert not (dest / "h").exists()
    assert secret.stat().st_nlink == 1


def test_existing_symlink_in_dest_used_as_a_parent(arena: tuple[Path, Path], tmp_path: Path,
                                                   signing_key: SigningKey,
                                                   trust: TrustStore) -> None:
    dest, outside = arena
    os.symlink(outside, dest / "link")
    payload = tar_bytes(entry("fine", b"ok"), entry("link/evil", b"x"))
    with pytest.raises(UnsafeArchiveError,
                       match="refusing member 'link/evil': 'link' is a symlink already in"):
        extract_payload(payload, dest, signing_key, trust, tmp_path)
    nothing_outside(outside, dest)


def test_hard_link_to_an_existing_symlink_then_through_it(
    arena: tuple[Path, Path], tmp_path: Path, signing_key: SigningKey, trust: TrustStore
) -> None:
    dest, outside = arena
    os.symlink(outside, dest / "existing")
    payload = tar_bytes(entry("d", kind=tarfile.LNKTYPE, linkname="existing"),
                        entry("d/evil", b"x"))
    with pytest.raises(UnsafeArchiveError, match="refusing member 'd/evil'"):
        extract_payload(payload, dest, signing_key, trust, tmp_path)
    nothing_outside(outside, dest)


# Streams where a guard that reads headers differently from GNU tar would check one member
# while tar extracts another: each hides "link/evil" (DEST/link points outside) from a naive
# reader. GNU tar 1.34 extracts the hidden member from each of them.

HIDDEN = header_block("link/evil", 5) + padded(b"evil!")


def regular_member_named_like_a_directory() -> bytes:
    return header_block("x/", len(HIDDEN)) + HIDDEN + END


def size_field_gnu_tar_reads_as_base_64() -> bytes:
    cover = header_block("cover", len(HIDDEN))  # tar takes this block for 52 bytes of "f"
    first = with_field(header_block("f", 0), 124, b"+0".ljust(12, b"\x00"))
    return first + cover + HIDDEN + END


def pax_header_before_another_pax_header() -> bytes:
    return pax_block({"path": "harmless"}) + pax_block({"comment": "c"}) + HIDDEN + END


def pax_record_longer_than_its_header() -> bytes:
    records = b"99 path=harmless\n"
    return (header_block("PaxHeaders/x", len(records), kind=tarfile.XHDTYPE)
            + padded(records) + HIDDEN + END)


@pytest.mark.parametrize(
    "stream",
    [regular_member_named_like_a_directory, size_field_gnu_tar_reads_as_base_64,
     pax_header_before_another_pax_header, pax_record_longer_than_its_header],
)
def test_streams_gnu_tar_reads_differently_are_refused(
    arena: tuple[Path, Path], tmp_path: Path, signing_key: SigningKey, trust: TrustStore,
    stream: object,
) -> None:
    dest, outside = arena
    os.symlink(outside, dest / "link")
    assert callable(stream)
    with pytest.raises(UnsafeArchiveError):
        extract_payload(stream(), dest, signing_key, trust, tmp_path)
    nothing_outside(outside, dest)
