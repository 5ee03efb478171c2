"""The server's secrets: password hashes, token digests, API token format and the escrow key
that seals the units' credentials."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from server.crypto import (
    ADMIN_PASSWORD_LENGTH,
    ApiToken,
    Escrow,
    EscrowError,
    digest,
    hash_password,
    matches,
    new_admin_password,
    verify_password,
)


def test_password_hashes_are_salted_and_verify() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second
    assert first.startswith("scrypt$16384$8$1$")  # the real cost (app tests use less)
    assert "correct horse" not in first
    assert verify_password("correct horse", first)
    assert verify_password("correct horse", second)
    assert not verify_password("correct horse!", first)


@pytest.mark.parametrize("stored", ["", "scrypt$1$2", "bcrypt$16384$8$1$AAAA$AAAA",
                                    "scrypt$x$8$1$AAAA$AAAA"])
def test_a_malformed_password_hash_never_verifies(stored: str) -> None:
    assert not verify_password("anything", stored)


def test_digests_compare_by_value() -> None:
    assert digest("secret") == digest("secret") != digest("secret2")
    assert len(digest("secret")) == 64
    assert matches("secret", digest("secret"))
    assert not matches("Secret", digest("secret"))


def test_api_tokens_parse_back() -> None:
    token = ApiToken.new()
    assert ApiToken.parse(token.text) == token
    assert token.text.startswith(f"kiln_{token.token_id}_")
    assert len(token.token_id) == 16
    assert ApiToken.new() != token


@pytest.mark.parametrize("text", ["", "kiln", "kiln_abc_def", "kilndev_0123456789abcdef_x",
                                  "kiln_0123456789abcdef_", "other_0123456789abcdef_x"])
def test_malformed_api_tokens_do_not_parse(text: str) -> None:
    assert ApiToken.parse(text) is None


def test_admin_passwords_avoid_look_alike_characters() -> None:
    passwords = {new_admin_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) == ADMIN_PASSWORD_LENGTH
        assert not set(password) & set("0O1lI")


def test_escrow_seals_bound_to_their_context() -> None:
    escrow = Escrow(b"\x01" * 32)
    sealed = escrow.seal("hunter2", context="default/SN-1")
    assert b"hunter2" not in sealed
    assert escrow.seal("hunter2", context="default/SN-1") != sealed  # a fresh nonce each time
    assert escrow.open(sealed, context="default/SN-1") == "hunter2"
    with pytest.raises(EscrowError):
        escrow.open(sealed, context="default/SN-2")
    with pytest.raises(EscrowError):
        Escrow(b"\x02" * 32).open(sealed, context="default/SN-1")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(EscrowError):
        escrow.open(tampered, context="default/SN-1")
    with pytest.raises(EscrowError):
        escrow.open(b"short", context="default/SN-1")


def test_the_escrow_key_must_be_32_bytes() -> None:
    with pytest.raises(EscrowError, match="32 bytes"):
        Escrow(b"\x01" * 16)


def test_the_key_file_is_made_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    made = Escrow.from_file(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text())) == 32
    again = Escrow.from_file(path, create=True)
    assert again.key_id == made.key_id
    sealed = made.seal("pw", context="c")
    assert Escrow.from_file(path, create=False).open(sealed, context="c") == "pw"


def test_a_missing_key_is_not_made_when_not_asked(tmp_path: Path) -> None:
    with pytest.raises(EscrowError, match="missing"):
        Escrow.from_file(tmp_path / "secret.key", create=False)
    assert not (tmp_path / "secret.key").exists()


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    Escrow.from_file(path, create=True)
    path.chmod(0o644)
    with pytest.raises(EscrowError, match="chmod 600"):
        Escrow.from_file(path, create=True)


def test_a_key_file_that_is_not_base64_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("not base64 at all!\n")
    path.chmod(0o600)
    with pytest.raises(EscrowError, match="not a base64 server key"):
        Escrow.from_file(path, create=False)
    path.write_text(base64.b64encode(b"short").decode())
    with pytest.raises(EscrowError, match="32 bytes"):
        Escrow.from_file(path, create=False)
