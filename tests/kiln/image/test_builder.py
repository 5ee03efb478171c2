from __future__ import annotations

import hashlib
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from kiln.image.builder import ImageSpec, build_image
from kiln.image.envelope import decode_envelope, envelope_size
from kiln.image.errors import ImageError, ManifestError
from kiln.image.reader import ImageReader
from kiln.image.signing import SigningKey, TrustStore, public_key_of
from kiln.progress import Progress
from tests.kiln.image.helpers import CREATED, FRAME_SIZE

pytestmark = pytest.mark.allow_commands("tar")

SPEC = ImageSpec(product="demo", version="3.0.1", build=12, variants=("apu2", "apu4"),
                 description="builder test", frame_size=FRAME_SIZE, created=CREATED)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('NAME="Demo"\n')
    generator = random.Random(3)  # noqa: S311 - repeatable test data
    (root / "blob").write_bytes(generator.randbytes(200_000))
    (root / "zeros").write_bytes(bytes(300_000))
    os.symlink("etc/os-release", root / "os-release")
    return root


def test_the_manifest_describes_the_file(rootfs: Path, tmp_path: Path,
                                         signing_key: SigningKey) -> None:
    out = tmp_path / "out.upd"
    manifest = build_image(rootfs, out, spec=SPEC, keys=[signing_key])
    data = out.read_bytes()
    start = envelope_size(data[:8])
    envelope = decode_envelope(data[:start])
    assert envelope.parse_manifest() == manifest
    assert (manifest.product, manifest.version, manifest.build) == ("demo", "3.0.1", 12)
    assert manifest.variants == ("apu2", "apu4")
    assert manifest.description == "builder test"
    assert manifest.created == CREATED
    assert len(data) == start + manifest.compressed_size
    assert len(manifest.frames) == -(-manifest.payload_size // FRAME_SIZE) > 4
    payload = bytearray()
    for index, frame in enumerate(manifest.frames):
        body = data[start + frame.offset: start + frame.offset + frame.length]
        assert hashlib.sha256(body).hexdigest() == frame.sha256
        output = zstandard.ZstdDecompressor().decompress(body)
        assert len(output) == manifest.frame_output_size(index)
        payload += output
    assert len(payload) == manifest.payload_size
    assert payload.startswith(b"./")  # GNU tar's first member: the root directory


def test_the_same_tree_gives_the_same_bytes(rootfs: Path, tmp_path: Path,
                                            signing_key: SigningKey) -> None:
    one = tmp_path / "one.upd"
    two = tmp_path / "two.upd"
    build_image(rootfs, one, spec=SPEC, keys=[signing_key])
    build_image(rootfs, two, spec=replace(SPEC, threads=1), keys=[signing_key])
    assert one.read_bytes() == two.read_bytes()


def test_signed_by_several_keys(rootfs: Path, tmp_path: Path, signing_key: SigningKey,
                                other_key: SigningKey, trust: TrustStore) -> None:
    out = tmp_path / "out.upd"
    build_image(rootfs, out, spec=SPEC, keys=[other_key, signing_key])
    with ImageReader.open(out, trust) as reader:
        assert reader.key_id == signing_key.key_id
    with ImageReader.open(out, TrustStore.of(public_key_of(other_key))) as reader:
        assert reader.key_id == other_key.key_id
        reader.verify()


def test_created_defaults_to_source_date_epoch(rootfs: Path, tmp_path: Path,
                                               signing_key: SigningKey,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    manifest = build_image(rootfs, tmp_path / "out.upd", spec=replace(SPEC, created=None),
                           keys=[signing_key])
    assert manifest.created == "2026-01-01T00:00:00Z"


def test_progress_counts_the_payload(rootfs: Path, tmp_path: Path,
                                     signing_key: SigningKey) -> None:
    progress = Progress("build", enabled=False)
    manifest = build_image(rootfs, tmp_path / "out.upd", spec=SPEC, keys=[signing_key],
                           progress=progress)
    assert progress.done == manifest.payload_size


def test_an_invalid_spec_leaves_nothing_behind(rootfs: Path, tmp_path: Path,
                                               signing_key: SigningKey) -> None:
    out = tmp_path / "images" / "bad.upd"
    out.parent.mkdir()
    with pytest.raises(ManifestError, match='version: "three" is not a dotted numeric'):
        build_image(rootfs, out, spec=replace(SPEC, version="three"), keys=[signing_key])
    assert list(out.parent.iterdir()) == []


def test_an_existing_image_is_replaced_only_when_the_new_one_is_complete(
    rootfs: Path, tmp_path: Path, signing_key: SigningKey
) -> None:
    out = tmp_path / "out.upd"
    out.write_bytes(b"previous image")
    with pytest.raises(ManifestError):
        build_image(rootfs, out, spec=replace(SPEC, product="no spaces allowed"),
                    keys=[signing_key])
    assert out.read_bytes() == b"previous image"
    build_image(rootfs, out, spec=SPEC, keys=[signing_key])
    assert out.read_bytes() != b"previous image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.upd", "rootfs"]


def test_rootfs_must_be_a_directory(tmp_path: Path, signing_key: SigningKey) -> None:
    with pytest.raises(ImageError, match="nope is not a directory"):
        build_image(tmp_path / "nope", tmp_path / "out.upd", spec=SPEC, keys=[signing_key])


def test_an_image_needs_a_key(rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="needs at least one signing key"):
        build_image(rootfs, tmp_path / "out.upd", spec=SPEC, keys=[])
    assert not (tmp_path / "out.upd").exists()
