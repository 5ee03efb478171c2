"""SHA-512 crypt against its specification's vectors and against glibc (through openssl)."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.shadow import sha512_crypt, verify

# From Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512", the SHA-512 test vectors.
SPECIFICATION = [
    ("$6$saltstring", "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdF"
     "CoEOfaS35inz1"),
    ("$6$rounds=10000$saltstringsaltstring", "Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp"
     "8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("$6$rounds=5000$toolongsaltstring", "This is just a test",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx"
     "1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("$6$rounds=10$roundstoolow", "the minimum number is still observed",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaT"
     "fF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
]


def _parse(setting: str) -> tuple[str, int | None]:
    parts = setting.split("$")
    if parts[2].startswith("rounds="):
        return parts[3], int(parts[2][len("rounds="):])
    return parts[2], 5000


@pytest.mark.parametrize(("setting", "password", "expected"), SPECIFICATION)
def test_the_specifications_vectors(setting: str, password: str, expected: str) -> None:
    salt, rounds = _parse(setting)
    hashed = sha512_crypt(password, salt=salt, rounds=rounds)
    assert hashed.rsplit("$", 1)[1] == expected.rsplit("$", 1)[1]
    assert verify(password, expected)
    assert not verify(password + "x", expected)


@pytest.mark.allow_commands("openssl")
@settings(max_examples=15, deadline=None)
@given(password=st.text(min_size=1, max_size=80).filter(  # openssl reads one non-empty line
           lambda text: not set(text) & {"\x00", "\n", "\r"}),
       salt=st.text(alphabet="./0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                    min_size=1, max_size=16))
def test_glibc_agrees(password: str, salt: str) -> None:
    """openssl's `passwd -6` is the same algorithm as glibc's crypt."""
    expected = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
                              input=password.encode() + b"\n", capture_output=True,
                              check=True).stdout.decode().strip()
    assert sha512_crypt(password, salt=salt, rounds=5000) == expected


def test_kiln_hashes_are_salted_and_slow() -> None:
    first, second = sha512_crypt("secret"), sha512_crypt("secret")
    assert first != second
    assert first.startswith("$6$rounds=100000$")
    assert verify("secret", first) and verify("secret", second)
    with pytest.raises(ValueError, match="salt"):
        sha512_crypt("x", salt="a$b")
