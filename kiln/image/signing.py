"""Ed25519 signing keys, key ids and the set of keys a reader trusts.

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key. Images carry
key ids next to their signatures, so a fleet can move to a new key: sign with both, trust
both, then retire the old one.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kiln.errors import KilnError

# Domain separation: a signature over a manifest can never be replayed as anything else.
SIGNING_CONTEXT = b"kiln-upd-manifest-v1\x00"
PUBLIC_KEY_SUFFIXES = (".pub", ".pem")


class KeyFileError(KilnError):
    """A key file is missing, unreadable or not an Ed25519 key."""


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    raw: bytes
    source: str

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey

    def sign(self, message: bytes) -> str:
        """The base64 Ed25519 signature of `message`."""
        return base64.b64encode(self.private.sign(message)).decode()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private key readable by the owner only); return its key id.

    Refuses to overwrite an existing file: losing a signing key strands a fleet.
    """
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return key_id_of(_raw_public(private.public_key()))


def load_signing_key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise KeyFileError(f"cannot read signing key {path}: {e.strerror}") from e
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return SigningKey(key_id=key_id_of(_raw_public(key.public_key())), private=key)


def load_public_key(path: Path) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise KeyFileError(f"cannot read public key {path}: {e.strerror}") from e
    except ValueError as e:
        raise KeyFileError(f"{path} is not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    raw = _raw_public(key)
    return PublicKey(key_id=key_id_of(raw), raw=raw, source=str(path))


@dataclass(frozen=True)
class TrustStore:
    """The public keys whose signatures a reader accepts, by key id."""

    keys: Mapping[str, PublicKey]

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> TrustStore:
        """Load key files, and every `*.pub`/`*.pem` file in directories among `paths`."""
        keys: dict[str, PublicKey] = {}
        for path in paths:
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.suffix in PUBLIC_KEY_SUFFIXES)
            else:
                files = [path]
            for file in files:
                key = load_public_key(file)
                keys[key.key_id] = key
        if not keys:
            raise KeyFileError("no trusted public keys found in " + ", ".join(map(str, paths)))
        return cls(keys=keys)

    @classmethod
    def of(cls, *keys: PublicKey) -> TrustStore:
        return cls(keys={key.key_id: key for key in keys})

    def describe(self) -> str:
        return ", ".join(sorted(self.keys))


def public_key_of(key: SigningKey) -> PublicKey:
    raw = _raw_public(key.private.public_key())
    return PublicKey(key_id=key.key_id, raw=raw, source="(derived from the signing key)")
