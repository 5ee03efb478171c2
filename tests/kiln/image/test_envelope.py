from __future__ import annotations

import json
from dataclasses import replace

import pytest

from kiln.image.envelope import (
    ENVELOPE_MARK,
    HEADER,
    MAX_ENVELOPE_SIZE,
    SKIPPABLE_MAGIC,
    Envelope,
    Signature,
    decode_envelope,
    encode_envelope,
    envelope_size,
)
from kiln.image.errors import EnvelopeError, SignatureError, UntrustedKeyError
from kiln.image.manifest import Manifest, image_id
from kiln.image.signing import SigningKey, TrustStore, public_key_of
from tests.kiln.image.helpers import compress_frames, manifest_for


@pytest.fixture
def manifest() -> Manifest:
    payload = b"kiln" * 3000
    return manifest_for(compress_frames(payload, 4096), payload_size=len(payload),
                        frame_size=4096)


def frame_of(content: bytes) -> bytes:
    return HEADER.pack(SKIPPABLE_MAGIC, len(content)) + content


def test_round_trip(manifest: Manifest, signing_key: SigningKey, trust: TrustStore) -> None:
    data = encode_envelope(manifest, [signing_key])
    envelope = decode_envelope(data)
    assert envelope.size == len(data) == envelope_size(data[:8])
    assert envelope.manifest_text == manifest.canonical_text()
    assert envelope.parse_manifest() == manifest
    assert envelope.image_id == image_id(manifest.canonical_text())
    assert envelope.verify(trust) == signing_key.key_id


def test_the_envelope_is_a_zstd_skippable_frame(manifest: Manifest,
                                                signing_key: SigningKey) -> None:
    data = encode_envelope(manifest, [signing_key])
    magic, length = HEADER.unpack(data[:8])
    assert magic == SKIPPABLE_MAGIC == 0x184D2A50
    assert length == len(data) - 8
    assert data[8:].startswith(ENVELOPE_MARK)


def test_an_image_needs_a_signature(manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="at least one signature"):
        encode_envelope(manifest, [])


def test_signed_by_an_unknown_key(manifest: Manifest, other_key: SigningKey,
                                  trust: TrustStore) -> None:
    envelope = decode_envelope(encode_envelope(manifest, [other_key]))
    with pytest.raises(UntrustedKeyError) as caught:
        envelope.verify(trust)
    assert f"image is signed by {other_key.key_id}" in str(caught.value)
    assert "none of those keys is trusted" in str(caught.value)
    assert trust.describe() in str(caught.value)


def test_unsigned_envelope_names_nobody(manifest: Manifest, trust: TrustStore,
                                        signing_key: SigningKey) -> None:
    envelope = replace(decode_envelope(encode_envelope(manifest, [signing_key])), signatures=())
    with pytest.raises(UntrustedKeyError, match="signed by nobody"):
        envelope.verify(trust)


def test_key_rotation_one_trusted_signature_of_two_is_enough(
    manifest: Manifest, signing_key: SigningKey, other_key: SigningKey
) -> None:
    envelope = decode_envelope(encode_envelope(manifest, [other_key, signing_key]))
    assert [s.key_id for s in envelope.signatures] == [other_key.key_id, signing_key.key_id]
    assert envelope.verify(TrustStore.of(public_key_of(other_key))) == other_key.key_id
    assert envelope.verify(TrustStore.of(public_key_of(signing_key))) == signing_key.key_id


def test_manifest_altered_after_signing(manifest: Manifest, signing_key: SigningKey,
                                        trust: TrustStore) -> None:
    envelope = decode_envelope(encode_envelope(manifest, [signing_key]))
    altered = replace(envelope, manifest_text=envelope.manifest_text.replace(
        '"version":"1.0"', '"version":"9.0"'))
    assert altered.manifest_text != envelope.manifest_text
    with pytest.raises(SignatureError, match="does not match the manifest") as caught:
        altered.verify(trust)
    assert type(caught.value) is SignatureError
    assert signing_key.key_id in str(caught.value)


def test_a_trusted_key_id_with_another_keys_signature(
    manifest: Manifest, signing_key: SigningKey, other_key: SigningKey, trust: TrustStore
) -> None:
    forged = decode_envelope(encode_envelope(manifest, [other_key]))
    lying = replace(forged, signatures=(
        Signature(key_id=signing_key.key_id, ed25519=forged.signatures[0].ed25519),
    ))
    with pytest.raises(SignatureError, match="does not match"):
        lying.verify(trust)


def test_every_trusted_signature_must_match(
    manifest: Manifest, signing_key: SigningKey, trust: TrustStore
) -> None:
    good = decode_envelope(encode_envelope(manifest, [signing_key]))
    bad = Signature(key_id=signing_key.key_id, ed25519=signing_key.sign(b"something else"))
    with pytest.raises(SignatureError, match="does not match"):
        replace(good, signatures=(*good.signatures, bad)).verify(trust)


def test_signature_that_is_not_base64(manifest: Manifest, signing_key: SigningKey,
                                      trust: TrustStore) -> None:
    envelope = decode_envelope(encode_envelope(manifest, [signing_key]))
    broken = replace(envelope, signatures=(Signature(key_id=signing_key.key_id,
                                                     ed25519="not base64!"),))
    with pytest.raises(SignatureError, match="is not base64"):
        broken.verify(trust)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x50\x2a", "file is too short for a Kiln image (2 bytes)"),
        (b"\x28\xb5\x2f\xfd" + b"\x00" * 8, "not a Kiln image: starts with 0xfd2fb528"),
        (HEADER.pack(SKIPPABLE_MAGIC, 4), "envelope length 4 is out of range"),
        (HEADER.pack(SKIPPABLE_MAGIC, MAX_ENVELOPE_SIZE + 1), "out of range"),
    ],
)
def test_headers_that_are_not_an_envelope(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        envelope_size(data)


def test_truncated_envelope(manifest: Manifest, signing_key: SigningKey) -> None:
    data = encode_envelope(manifest, [signing_key])
    with pytest.raises(EnvelopeError, match=f"truncated: {len(data) - 1} of {len(data)}"):
        decode_envelope(data[:-1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"OTHERAPP" + b"{}", "marker missing"),
        (ENVELOPE_MARK + b"{not json", "envelope is not valid JSON"),
        (ENVELOPE_MARK + b"\xff\xfe\x00", "envelope is not valid JSON"),
        (ENVELOPE_MARK + b'{"manifest": "x"}', "exactly 'manifest' and 'signatures'"),
        (ENVELOPE_MARK + b'{"manifest": {}, "signatures": []}', "must be the manifest's JSON"),
        (ENVELOPE_MARK + b'{"manifest": "x", "signatures": [{"key_id": "a"}]}',
         "must be a list of {key_id, ed25519} strings"),
        (ENVELOPE_MARK + b'{"manifest": "x", "signatures": [{"key_id": 1, "ed25519": "b"}]}',
         "must be a list of"),
    ],
)
def test_malformed_envelopes(content: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message.replace("{", r"\{").replace("}", r"\}")):
        decode_envelope(frame_of(content))


def test_decoded_envelope_keeps_the_exact_signed_text(signing_key: SigningKey,
                                                      trust: TrustStore) -> None:
    # Whitespace is part of what was signed: a reader never re-serializes the manifest.
    text = '{"b": 1,  "a": 2}'
    body = {"manifest": text, "signatures": []}
    envelope = decode_envelope(frame_of(ENVELOPE_MARK + json.dumps(body).encode()))
    assert envelope.manifest_text == text
    assert isinstance(envelope, Envelope)
