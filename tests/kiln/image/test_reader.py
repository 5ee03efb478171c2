"""The verified reader on local files: every kind of bad image gets its own, named error."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from kiln.image.envelope import HEADER, SKIPPABLE_MAGIC, decode_envelope
from kiln.image.errors import (
    EnvelopeError,
    FrameError,
    ImageError,
    ManifestError,
    SignatureError,
    SourceError,
    UntrustedKeyError,
)
from kiln.image.manifest import Frame
from kiln.image.reader import ImageReader, TruncatedFrameError
from kiln.image.signing import SigningKey, TrustStore
from tests.kiln.image.helpers import (
    FRAME_SIZE,
    BuiltImage,
    assemble,
    compress_frames,
    flip,
    make_image_from_payload,
    manifest_for,
    random_files,
    read_until_error,
    signed_envelope_for_text,
    silent_flip,
    tar_of_files,
)

LAST = 4


@pytest.fixture(scope="module")
def payload() -> bytes:
    stream, _ = tar_of_files(random_files([40_000, 70_000, 100_000, 50_000, 30_000]))
    assert -(-len(stream) // FRAME_SIZE) == LAST + 1
    return stream


@pytest.fixture
def image(payload: bytes, signing_key: SigningKey) -> BuiltImage:
    return make_image_from_payload(payload, signing_key, FRAME_SIZE)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "image.upd"
    path.write_bytes(data)
    return path


def test_a_good_image_verifies_and_yields_its_payload(
    tmp_path: Path, image: BuiltImage, payload: bytes, trust: TrustStore,
    signing_key: SigningKey,
) -> None:
    with ImageReader.open(image.write(tmp_path / "good.upd"), trust) as reader:
        reader.verify()
        assert reader.key_id == signing_key.key_id
        assert reader.manifest == image.manifest
        assert reader.payload_offset == image.envelope_size
        assert reader.total_size == len(image.data)
        chunks = list(reader.payload())
    assert [len(c) for c in chunks] == [FRAME_SIZE] * LAST + [len(payload) - LAST * FRAME_SIZE]
    assert b"".join(chunks) == payload


def test_frames_can_be_read_from_any_index(tmp_path: Path, image: BuiltImage,
                                           trust: TrustStore) -> None:
    with ImageReader.open(image.write(tmp_path / "good.upd"), trust) as reader:
        frames = list(reader.frames(start=3))
    assert [f.index for f in frames] == [3, 4]
    assert [f.data for f in frames] == list(image.frames[3:])


def test_signed_by_an_unknown_key(tmp_path: Path, payload: bytes, other_key: SigningKey,
                                  trust: TrustStore) -> None:
    image = make_image_from_payload(payload, other_key, FRAME_SIZE)
    with pytest.raises(UntrustedKeyError) as caught:
        ImageReader.open(write(tmp_path, image.data), trust)
    assert other_key.key_id in str(caught.value)
    assert "none of those keys is trusted" in str(caught.value)


def test_the_signature_is_checked_before_the_manifest_is_parsed(
    tmp_path: Path, other_key: SigningKey, trust: TrustStore
) -> None:
    path = write(tmp_path, signed_envelope_for_text("{ not json", [other_key]))
    with pytest.raises(UntrustedKeyError):
        ImageReader.open(path, trust)


def test_manifest_edited_in_place_after_signing(tmp_path: Path, image: BuiltImage,
                                                trust: TrustStore) -> None:
    # The manifest text sits JSON-escaped inside the envelope; same length, other version.
    original = b'\\"version\\":\\"1.0\\"'
    assert image.data.count(original) == 1
    data = image.data.replace(original, b'\\"version\\":\\"9.0\\"')
    assert len(data) == len(image.data)
    with pytest.raises(SignatureError, match="does not match the manifest") as caught:
        ImageReader.open(write(tmp_path, data), trust)
    assert type(caught.value) is SignatureError


def test_manifest_rewritten_with_a_new_frame_header_after_signing(
    tmp_path: Path, image: BuiltImage, trust: TrustStore
) -> None:
    envelope = decode_envelope(image.data[: image.envelope_size])
    document = json.loads(envelope.manifest_text)
    document["version"] = "1.0.1"
    document["variants"] = ["apu2", "apu4"]
    body = json.dumps({
        "manifest": json.dumps(document, sort_keys=True, separators=(",", ":")),
        "signatures": [{"key_id": s.key_id, "ed25519": s.ed25519} for s in envelope.signatures],
    }).encode()
    content = b"KILNUPD1" + body + b"\n"
    data = HEADER.pack(SKIPPABLE_MAGIC, len(content)) + content + image.data[image.envelope_size:]
    assert len(data) != len(image.data)
    with pytest.raises(SignatureError, match="does not match the manifest") as caught:
        ImageReader.open(write(tmp_path, data), trust)
    assert type(caught.value) is SignatureError


@pytest.mark.parametrize("index", [0, 2, LAST])
def test_one_byte_flipped_inside_frame_k_is_named_by_verify(
    tmp_path: Path, image: BuiltImage, trust: TrustStore, index: int
) -> None:
    # A flip zstd itself cannot notice (the frame still decodes to the right size): only
    # the manifest's sha256 stands between it and the consumer.
    position = image.frame_start(index) + silent_flip(
        image.frames[index], image.manifest.frame_output_size(index))
    with (
        ImageReader.open(write(tmp_path, flip(image.data, position)), trust) as reader,
        pytest.raises(FrameError) as caught,
    ):
        reader.verify()
    assert type(caught.value) is FrameError
    assert caught.value.index == index
    assert str(caught.value).startswith(f"frame {index}: sha256 mismatch")
    assert f"bytes {image.frame_start(index)}-{image.frame_end(index) - 1}" in str(caught.value)


@pytest.mark.parametrize("index", [0, 3])
def test_nothing_of_a_bad_frame_reaches_the_consumer(
    tmp_path: Path, image: BuiltImage, payload: bytes, trust: TrustStore, index: int
) -> None:
    position = image.frame_start(index) + silent_flip(
        image.frames[index], image.manifest.frame_output_size(index))
    with ImageReader.open(write(tmp_path, flip(image.data, position)), trust) as reader:
        received, error = read_until_error(reader)
    assert isinstance(error, FrameError)
    assert error.index == index
    assert received == payload[: index * FRAME_SIZE]


@pytest.mark.parametrize("index", [1, LAST])
def test_truncated_inside_a_frame(tmp_path: Path, image: BuiltImage, trust: TrustStore,
                                  index: int) -> None:
    cut = image.frame_start(index) + image.manifest.frames[index].length // 2
    with (
        ImageReader.open(write(tmp_path, image.data[:cut]), trust) as reader,
        pytest.raises(TruncatedFrameError) as caught,
    ):
        reader.verify()
    assert caught.value.index == index
    assert str(caught.value).startswith(f"frame {index}: cut off")
    assert f"ends at byte {cut}" in str(caught.value)


def test_truncated_at_a_frame_boundary(tmp_path: Path, image: BuiltImage, payload: bytes,
                                       trust: TrustStore) -> None:
    with ImageReader.open(write(tmp_path, image.data[: image.frame_start(3)]), trust) as reader:
        received, error = read_until_error(reader)
    assert isinstance(error, TruncatedFrameError)
    assert error.index == 3
    assert received == payload[: 3 * FRAME_SIZE]


def test_truncated_inside_the_envelope(tmp_path: Path, image: BuiltImage,
                                       trust: TrustStore) -> None:
    with pytest.raises(EnvelopeError, match="the envelope is cut off"):
        ImageReader.open(write(tmp_path, image.data[: image.envelope_size - 10]), trust)


def test_bytes_after_the_last_frame(tmp_path: Path, image: BuiltImage,
                                    trust: TrustStore) -> None:
    with (
        ImageReader.open(write(tmp_path, image.data + b"extra"), trust) as reader,
        pytest.raises(ImageError, match="5 unexpected bytes after the last frame") as caught,
    ):
        reader.verify()
    assert not isinstance(caught.value, FrameError)


def lengths_shifted(image: BuiltImage, index: int, delta: int,
                    signing_key: SigningKey) -> BuiltImage:
    """The same bytes, but the manifest moves the boundary after frame `index` by `delta`.

    Each sha256 is taken over the bytes that really are at the manifest's ranges, so the
    checksums pass and only the reader's zstd frame-structure check can catch it.
    """
    body = image.data[image.envelope_size:]
    frames = list(image.manifest.frames)
    moved = frames[index + 1]
    frames[index] = replace(frames[index], length=frames[index].length + delta)
    frames[index + 1] = Frame(offset=moved.offset + delta, length=moved.length - delta,
                              sha256="")
    pieces = [body[f.offset:f.offset + f.length] for f in frames]
    frames = [replace(f, sha256=hashlib.sha256(p).hexdigest()) for f, p in zip(frames, pieces,
                                                                                 strict=True)]
    manifest = replace(image.manifest, frames=tuple(frames))
    return assemble(manifest, pieces, [signing_key], payload=image.payload)


def test_a_frame_longer_than_its_zstd_frame(tmp_path: Path, image: BuiltImage,
                                            signing_key: SigningKey, trust: TrustStore) -> None:
    bad = lengths_shifted(image, 1, 7, signing_key)
    with (
        ImageReader.open(write(tmp_path, bad.data), trust) as reader,
        pytest.raises(FrameError) as caught,
    ):
        reader.verify()
    assert caught.value.index == 1
    assert str(caught.value) == (
        f"frame 1: the manifest's length {image.manifest.frames[1].length + 7} runs 7 bytes "
        "past the end of the zstd frame"
    )


def test_a_frame_shorter_than_its_zstd_frame(tmp_path: Path, image: BuiltImage,
                                             signing_key: SigningKey, trust: TrustStore) -> None:
    bad = lengths_shifted(image, 2, -5, signing_key)
    with ImageReader.open(write(tmp_path, bad.data), trust) as reader:
        received, error = read_until_error(reader)
    assert isinstance(error, FrameError)
    assert error.index == 2
    assert str(error) == (
        f"frame 2: the manifest's length {image.manifest.frames[2].length - 5} ends inside "
        "the zstd frame"
    )
    assert received == image.payload[: 2 * FRAME_SIZE]


def test_a_frame_that_decompresses_to_the_wrong_size(
    tmp_path: Path, payload: bytes, signing_key: SigningKey, trust: TrustStore
) -> None:
    frames = compress_frames(payload, FRAME_SIZE)
    frames[1] = zstandard.ZstdCompressor().compress(payload[FRAME_SIZE:2 * FRAME_SIZE - 512])
    manifest = manifest_for(frames, payload_size=len(payload), frame_size=FRAME_SIZE)
    data = assemble(manifest, frames, [signing_key]).data
    with (
        ImageReader.open(write(tmp_path, data), trust) as reader,
        pytest.raises(FrameError) as caught,
    ):
        reader.verify()
    assert caught.value.index == 1
    assert str(caught.value) == (
        f"frame 1: decompresses to {FRAME_SIZE - 512} bytes; the manifest implies {FRAME_SIZE}"
    )


def test_a_frame_that_is_not_zstd_at_all(tmp_path: Path, payload: bytes,
                                         signing_key: SigningKey, trust: TrustStore) -> None:
    frames = compress_frames(payload, FRAME_SIZE)
    frames[3] = b"\x00not zstd" * 50
    data = assemble(manifest_for(frames, payload_size=len(payload), frame_size=FRAME_SIZE),
                    frames, [signing_key]).data
    with (
        ImageReader.open(write(tmp_path, data), trust) as reader,
        pytest.raises(FrameError, match=r"^frame 3: not a valid zstd frame") as caught,
    ):
        reader.verify()
    assert caught.value.index == 3


def test_two_zstd_frames_in_one_manifest_frame(tmp_path: Path, payload: bytes,
                                               signing_key: SigningKey,
                                               trust: TrustStore) -> None:
    frames = compress_frames(payload, FRAME_SIZE)
    half = FRAME_SIZE // 2
    frames[0] = b"".join(compress_frames(payload[:FRAME_SIZE], half))
    data = assemble(manifest_for(frames, payload_size=len(payload), frame_size=FRAME_SIZE),
                    frames, [signing_key]).data
    with (
        ImageReader.open(write(tmp_path, data), trust) as reader,
        pytest.raises(FrameError, match=r"^frame 0: the manifest's length \d+ runs"),
    ):
        reader.verify()


def signed_image_with_manifest_text(text: str, image: BuiltImage,
                                    signing_key: SigningKey) -> bytes:
    return signed_envelope_for_text(text, [signing_key]) + image.data[image.envelope_size:]


def test_malformed_manifest_json_that_is_signed(tmp_path: Path, image: BuiltImage,
                                                signing_key: SigningKey,
                                                trust: TrustStore) -> None:
    text = image.manifest.canonical_text()[:-1]  # the closing brace is gone
    path = write(tmp_path, signed_image_with_manifest_text(text, image, signing_key))
    with pytest.raises(ManifestError) as caught:
        ImageReader.open(path, trust)
    (problem,) = caught.value.problems
    assert problem.startswith("not valid JSON")
    assert "invalid manifest:" in str(caught.value)


def test_signed_manifest_with_several_problems_lists_them_all(
    tmp_path: Path, image: BuiltImage, signing_key: SigningKey, trust: TrustStore
) -> None:
    document = image.manifest.to_json()
    document["product"] = ""
    document["build"] = "7"
    document["payload"]["frames"][2]["length"] = 0
    document["payload"]["extra"] = True
    path = write(tmp_path, signed_image_with_manifest_text(json.dumps(document), image,
                                                           signing_key))
    with pytest.raises(ManifestError) as caught:
        ImageReader.open(path, trust)
    problems = caught.value.problems
    for expected in ['product: "" is not a product name',
                     'build: expected an integer, got "7"',
                     "payload: unknown key 'extra'",
                     "payload.frames[2].length: must be at least 1, got 0"]:
        assert expected in problems
        assert expected in str(caught.value)


def test_unknown_payload_kind(tmp_path: Path, image: BuiltImage, signing_key: SigningKey,
                              trust: TrustStore) -> None:
    document = image.manifest.to_json()
    document["payload"]["kind"] = "raw"
    path = write(tmp_path, signed_image_with_manifest_text(json.dumps(document), image,
                                                           signing_key))
    with pytest.raises(ManifestError, match='unknown payload kind "raw"'):
        ImageReader.open(path, trust)


@pytest.mark.parametrize("version", [2, True])
def test_unsupported_manifest_version(tmp_path: Path, image: BuiltImage,
                                      signing_key: SigningKey, trust: TrustStore,
                                      version: object) -> None:
    document = image.manifest.to_json()
    document["manifest_version"] = version
    path = write(tmp_path, signed_image_with_manifest_text(json.dumps(document), image,
                                                           signing_key))
    with pytest.raises(ManifestError,
                       match=f"unsupported manifest_version {json.dumps(version)}"):
        ImageReader.open(path, trust)


def test_a_plain_zstd_file_is_not_an_image(tmp_path: Path, trust: TrustStore) -> None:
    path = write(tmp_path, zstandard.ZstdCompressor().compress(b"just data"))
    with pytest.raises(EnvelopeError, match="not a Kiln image"):
        ImageReader.open(path, trust)


def test_a_missing_file(tmp_path: Path, trust: TrustStore) -> None:
    with pytest.raises(SourceError, match=r"cannot open .*missing\.upd: No such file"):
        ImageReader.open(tmp_path / "missing.upd", trust)
