"""Secrets: operator passwords, API tokens, line keys, device tokens, and escrow.

Nothing secret is stored as it is: operator passwords as salted scrypt, tokens and keys (which
are random and long) as sha256, and the units' admin passwords sealed with AES-256-GCM under a
key kept in a file outside the database (bound to the unit's serial, so a sealed value moved
to another row does not open).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kiln.errors import KilnError
from kiln.fsutil import atomic_write_bytes
from server.errors import ApiError

log = logging.getLogger("kiln.server.escrow")

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
# No look-alikes (0/O, 1/l/I): the password may be read off a screen and typed at a console.
_PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # noqa: S105
ADMIN_PASSWORD_LENGTH = 20  # ≈ 116 bits


class EscrowError(KilnError):
    pass


def unopenable(serial: str) -> ApiError:
    """The API's answer when a unit's sealed credential does not open: 409, because what is
    stored is wrong, not the request; nothing is revealed, handed out or changed."""
    log.error("escrowed credential does not open", extra={"serial": serial})
    return ApiError(409, f"the escrowed credential of unit {serial!r} does not open with this "
                         "server's key: it was sealed for another unit or under another key "
                         "(restore the server's secret key file)")


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return "$".join(["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                                r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def digest(secret: str) -> str:
    """How a random token or key is stored and looked up: its sha256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def new_admin_password() -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(ADMIN_PASSWORD_LENGTH))


@dataclass(frozen=True)
class ApiToken:
    """`kiln_<id>_<secret>`: the id finds the row, the secret's hash is compared."""

    token_id: str
    secret: str

    @property
    def text(self) -> str:
        return f"kiln_{self.token_id}_{self.secret}"

    @classmethod
    def new(cls) -> ApiToken:
        return cls(secrets.token_hex(8), new_secret())

    @classmethod
    def parse(cls, text: str) -> ApiToken | None:
        prefix, _, rest = text.partition("_")
        token_id, _, secret = rest.partition("_")
        if prefix != "kiln" or len(token_id) != 16 or not secret:
            return None
        return cls(token_id, secret)


class Escrow:
    """Seals and opens the units' credentials with the server key."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise EscrowError("the server key must be 32 bytes")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: Path, *, create: bool) -> Escrow:
        """The key in `path` (base64 text, mode 0600); made on first start when `create`."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            if not create:
                raise EscrowError(f"{path}: the server key is missing; escrowed credentials "
                                  "cannot be opened without it") from None
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, base64.b64encode(os.urandom(32)) + b"\n", mode=0o600)
            text = path.read_text()
        if path.stat().st_mode & 0o077:
            raise EscrowError(f"{path}: the server key must be readable by its owner only "
                              "(chmod 600)")
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except ValueError as e:
            raise EscrowError(f"{path}: not a base64 server key: {e}") from e

    def seal(self, plaintext: str, *, context: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def open(self, sealed: bytes, *, context: str) -> str:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], context.encode()).decode()
        except Exception as e:
            raise EscrowError("a sealed credential does not open with this server key") from e
