"""SHA-512 crypt (`$6$`), the password hash /etc/shadow takes on every Linux.

The admin password reaches a unit's disk only as this hash (DESIGN.md: "only its hash
reaches the disk"). Implemented here from Ulrich Drepper's specification because Python's
`crypt` module is gone in 3.13 and buildroot's Python is newer; the tests hold it to the
specification's vectors and to glibc.
"""

from __future__ import annotations

import hashlib
import secrets

_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DEFAULT_ROUNDS = 5000
_ROUNDS = 100_000  # what Kiln writes: slower to guess, still well under a second here
_MIN_ROUNDS, _MAX_ROUNDS = 1000, 999_999_999
_SALT_LENGTH = 16


def _encode(digest: bytes) -> str:
    text = []
    for i in range(21):
        a, b, c = digest[i], digest[i + 21], digest[i + 42]
        first, second, third = ((a, b, c), (b, c, a), (c, a, b))[i % 3]
        word = (first << 16) | (second << 8) | third
        for _ in range(4):
            text.append(_ALPHABET[word & 0x3F])
            word >>= 6
    word = digest[63]
    for _ in range(2):
        text.append(_ALPHABET[word & 0x3F])
        word >>= 6
    return "".join(text)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha512_crypt(password: str, *, salt: str | None = None, rounds: int | None = None) -> str:
    """`$6$[rounds=N$]salt$hash`; a random salt and Kiln's rounds unless given."""
    key = password.encode()
    salt = (salt if salt is not None else "".join(
        secrets.choice(_ALPHABET) for _ in range(_SALT_LENGTH)))[:_SALT_LENGTH]
    if any(character in salt for character in "$:\n"):
        raise ValueError("a crypt salt cannot contain '$', ':' or a newline")
    wanted = _ROUNDS if rounds is None else rounds
    count = min(max(wanted, _MIN_ROUNDS), _MAX_ROUNDS)
    salt_bytes = salt.encode()

    alternate = hashlib.sha512(key + salt_bytes + key).digest()
    intermediate = hashlib.sha512(key + salt_bytes)
    intermediate.update(_repeat(alternate, len(key)))
    length = len(key)
    while length > 0:
        intermediate.update(alternate if length & 1 else key)
        length >>= 1
    current = intermediate.digest()
    p_bytes = _repeat(hashlib.sha512(key * len(key)).digest(), len(key))
    s_bytes = _repeat(hashlib.sha512(salt_bytes * (16 + current[0])).digest(), len(salt_bytes))
    for i in range(count):
        step = hashlib.sha512(p_bytes if i & 1 else current)
        if i % 3:
            step.update(s_bytes)
        if i % 7:
            step.update(p_bytes)
        step.update(current if i & 1 else p_bytes)
        current = step.digest()
    rounds_part = f"rounds={count}$" if count != _DEFAULT_ROUNDS else ""
    return f"$6${rounds_part}{salt}${_encode(current)}"


def verify(password: str, hashed: str) -> bool:
    """Whether `password` gives `hashed` (a `$6$` hash)."""
    parts = hashed.split("$")
    if len(parts) < 4 or parts[1] != "6":
        return False
    rounds = None
    if parts[2].startswith("rounds="):
        rounds = int(parts[2][len("rounds="):])
        salt = parts[3]
    else:
        salt = parts[2]
    candidate = sha512_crypt(password, salt=salt, rounds=rounds if rounds is not None
                             else _DEFAULT_ROUNDS)
    return secrets.compare_digest(candidate.rsplit("$", 1)[1], hashed.rsplit("$", 1)[1])
