"""Operators and their API tokens, shared by the REST API and `kiln server` commands."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from server.auth import Scope
from server.context import now_ns
from server.crypto import ApiToken, digest, hash_password, new_secret
from server.db.schema import api_tokens, users
from server.errors import ApiError

USERNAME = r"^[a-z][a-z0-9._-]{0,63}$"


@dataclass(frozen=True)
class NewUser:
    user_id: int
    username: str
    password: str  # shown once


def create_user(connection: Connection, *, username: str, scopes: Iterable[Scope],
                password: str | None = None) -> NewUser:
    if connection.execute(select(users.c.id).where(users.c.username == username)).first():
        raise ApiError(409, f"operator {username!r} exists")
    secret = password or new_secret()
    user_id = connection.execute(users.insert().values(
        username=username, password_hash=hash_password(secret),
        scopes=" ".join(sorted(scope.value for scope in scopes)), created_ns=now_ns(),
        disabled=False)).inserted_primary_key
    assert user_id is not None
    return NewUser(int(user_id[0]), username, secret)


def any_admin(connection: Connection) -> bool:
    return any(Scope.ADMIN.value in row.scopes.split()
               for row in connection.execute(select(users.c.scopes)))


def create_token(connection: Connection, *, user_id: int, name: str,
                 scopes: Iterable[Scope], expires_ns: int | None = None) -> tuple[str, str]:
    """A new API token; returns (token id, the token text, shown once)."""
    token = ApiToken.new()
    connection.execute(api_tokens.insert().values(
        id=token.token_id, user_id=user_id, name=name, secret_hash=digest(token.secret),
        scopes=" ".join(sorted(scope.value for scope in scopes)), created_ns=now_ns(),
        expires_ns=expires_ns))
    return token.token_id, token.text
