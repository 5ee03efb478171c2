"""The skippable zstd frame at the start of a `.upd`: the manifest and its signatures."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

from kiln.image.errors import EnvelopeError, SignatureError, UntrustedKeyError
from kiln.image.manifest import Manifest, image_id, parse_manifest
from kiln.image.signing import SIGNING_CONTEXT, SigningKey, TrustStore

SKIPPABLE_MAGIC = 0x184D2A50
ENVELOPE_MARK = b"KILNUPD1"
HEADER = struct.Struct("<II")
MAX_ENVELOPE_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Signature:
    key_id: str
    ed25519: str


@dataclass(frozen=True)
class Envelope:
    """The envelope as read: trust nothing in it before `verify`."""

    manifest_text: str
    signatures: tuple[Signature, ...]
    size: int  # bytes on disk, frame header included: where the payload starts

    @property
    def image_id(self) -> str:
        return image_id(self.manifest_text)

    def parse_manifest(self) -> Manifest:
        return parse_manifest(self.manifest_text)

    def verify(self, trust: TrustStore) -> str:
        """Check the signatures against `trust`; return the id of the key that verified.

        Fails if no trusted key signed the manifest, and also if any trusted key's signature
        does not match: that means the manifest was altered after signing.
        """
        message = SIGNING_CONTEXT + self.manifest_text.encode()
        trusted = [s for s in self.signatures if s.key_id in trust.keys]
        if not trusted:
            signers = ", ".join(s.key_id for s in self.signatures) or "nobody"
            raise UntrustedKeyError(
                f"image is signed by {signers}, and none of those keys is trusted "
                f"(trusted: {trust.describe()})"
            )
        for signature in trusted:
            try:
                raw = base64.b64decode(signature.ed25519, validate=True)
            except binascii.Error as e:
                raise SignatureError(f"signature by key {signature.key_id} is not base64") from e
            if not trust.keys[signature.key_id].verify(raw, message):
                raise SignatureError(
                    f"signature by key {signature.key_id} does not match the manifest "
                    "(altered after signing?)"
                )
        return trusted[0].key_id


def encode_envelope(manifest: Manifest, keys: list[SigningKey]) -> bytes:
    """The complete skippable frame carrying `manifest` signed by every key in `keys`."""
    if not keys:
        raise ValueError("an image needs at least one signature")
    text = manifest.canonical_text()
    message = SIGNING_CONTEXT + text.encode()
    body = json.dumps(
        {
            "manifest": text,
            "signatures": [{"key_id": k.key_id, "ed25519": k.sign(message)} for k in keys],
        },
        indent=1, ensure_ascii=False,
    ).encode()
    content = ENVELOPE_MARK + body + b"\n"
    if len(content) > MAX_ENVELOPE_SIZE:
        raise EnvelopeError(f"envelope of {len(content)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    return HEADER.pack(SKIPPABLE_MAGIC, len(content)) + content


def envelope_size(header: bytes) -> int:
    """From the first 8 bytes of a file: the size of the whole envelope frame."""
    if len(header) < HEADER.size:
        raise EnvelopeError(f"file is too short for a Kiln image ({len(header)} bytes)")
    magic, length = HEADER.unpack(header[: HEADER.size])
    if magic != SKIPPABLE_MAGIC:
        raise EnvelopeError(
            f"not a Kiln image: starts with 0x{magic:08x}, not the skippable frame 0x"
            f"{SKIPPABLE_MAGIC:08x}"
        )
    if not len(ENVELOPE_MARK) < length <= MAX_ENVELOPE_SIZE:
        raise EnvelopeError(f"envelope length {length} is out of range")
    return HEADER.size + int(length)


def decode_envelope(frame: bytes) -> Envelope:
    """Parse a whole envelope frame (as sized by `envelope_size`)."""
    size = envelope_size(frame)
    if len(frame) != size:
        raise EnvelopeError(f"envelope is truncated: {len(frame)} of {size} bytes")
    content = frame[HEADER.size:]
    if not content.startswith(ENVELOPE_MARK):
        raise EnvelopeError("skippable frame does not hold a Kiln envelope (marker missing)")
    try:
        document: Any = json.loads(content[len(ENVELOPE_MARK):])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnvelopeError(f"envelope is not valid JSON: {e}") from e
    if not isinstance(document, dict) or set(document) != {"manifest", "signatures"}:
        raise EnvelopeError("envelope must be an object with exactly 'manifest' and 'signatures'")
    text, signatures = document["manifest"], document["signatures"]
    if not isinstance(text, str):
        raise EnvelopeError("envelope 'manifest' must be the manifest's JSON text")
    if not isinstance(signatures, list) or not all(
        isinstance(s, dict) and set(s) == {"key_id", "ed25519"}
        and all(isinstance(v, str) for v in s.values())
        for s in signatures
    ):
        raise EnvelopeError("envelope 'signatures' must be a list of {key_id, ed25519} strings")
    return Envelope(
        manifest_text=text,
        signatures=tuple(Signature(key_id=s["key_id"], ed25519=s["ed25519"]) for s in signatures),
        size=size,
    )
