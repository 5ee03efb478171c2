from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey

from kiln.image.signing import (
    KeyFileError,
    TrustStore,
    generate_keypair,
    load_public_key,
    load_signing_key,
    public_key_of,
)


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    key_id = generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    assert stat.S_IMODE((tmp_path / "a.key").stat().st_mode) == 0o600
    assert load_signing_key(tmp_path / "a.key").key_id == key_id
    public = load_public_key(tmp_path / "a.pub")
    assert public.key_id == key_id == hashlib.sha256(public.raw).hexdigest()[:16]


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    before = (tmp_path / "a.key").read_bytes()
    with pytest.raises(KeyFileError, match="already exists; refusing to overwrite"):
        generate_keypair(tmp_path / "a.key", tmp_path / "b.pub")
    (tmp_path / "a.key").unlink()
    with pytest.raises(KeyFileError, match=r"a\.pub already exists"):
        generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    assert not (tmp_path / "a.key").exists()
    assert before.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_signatures_verify_only_the_signed_message(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    key = load_signing_key(tmp_path / "a.key")
    public = load_public_key(tmp_path / "a.pub")
    signature = base64.b64decode(key.sign(b"message"))
    assert public.verify(signature, b"message")
    assert not public.verify(signature, b"messagE")
    assert public_key_of(key).raw == public.raw


def test_missing_and_malformed_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read signing key"):
        load_signing_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="cannot read public key"):
        load_public_key(tmp_path / "nope.pub")
    (tmp_path / "junk.pub").write_text("not a key\n")
    with pytest.raises(KeyFileError, match="is not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(KeyFileError, match="is not an unencrypted PEM private key"):
        load_signing_key(tmp_path / "junk.pub")


def test_other_key_types_are_refused(tmp_path: Path) -> None:
    other = Ed448PrivateKey.generate()
    (tmp_path / "ed448.key").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    (tmp_path / "ed448.pub").write_bytes(other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    ))
    with pytest.raises(KeyFileError, match="is not an Ed25519 private key"):
        load_signing_key(tmp_path / "ed448.key")
    with pytest.raises(KeyFileError, match="is not an Ed25519 public key"):
        load_public_key(tmp_path / "ed448.pub")


def test_trust_store_loads_files_and_directories(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    first = generate_keypair(keys / "one.key", keys / "one.pub")
    second = generate_keypair(tmp_path / "two.key", keys / "two.pem")
    (keys / "README").write_text("not a key: only *.pub and *.pem are read\n")
    third = generate_keypair(tmp_path / "three.key", tmp_path / "three.pub")
    store = TrustStore.from_paths([keys, tmp_path / "three.pub"])
    assert set(store.keys) == {first, second, third}
    assert store.describe() == ", ".join(sorted({first, second, third}))


def test_an_empty_trust_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no trusted public keys found in"):
        TrustStore.from_paths([tmp_path])
