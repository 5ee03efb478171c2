"""Who is asking: operators (API tokens or a web session), factory lines (a profile's line
key) and units (their device token); and what each may do.

- Operators: `Authorization: Bearer kiln_<id>_<secret>` with scopes, or the web UI's session
  cookie. A session may change state only with its CSRF token (form field or
  `X-CSRF-Token`), so another site cannot make a logged-in browser act.
- Factory lines: HTTP Basic with the profile's name and line key (iPXE and `mfgurl=` carry
  it as `https://PROFILE:KEY@server/…`).
- Units: `Authorization: Bearer kilndev_<secret>`, handed out at manufacture; a unit acts
  only on its own record.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select, update

from server.context import context_of, now_ns
from server.crypto import ApiToken, digest, matches, new_secret
from server.db.schema import api_tokens, profiles, sessions, units, users
from server.errors import ApiError

SESSION_COOKIE = "kiln_session"
SESSION_SECONDS = 12 * 3600
DEVICE_TOKEN_PREFIX = "kilndev_"  # noqa: S105 (a prefix, not a secret)
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_REALM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # what may go into a (latin-1) header


class Scope(enum.StrEnum):
    UNITS_READ = "units:read"
    CREDENTIALS_REVEAL = "credentials:reveal"
    IMAGES_WRITE = "images:write"
    MANUFDATA_WRITE = "manufdata:write"
    ROLLOUTS_WRITE = "rollouts:write"
    ADMIN = "admin"  # everything, and managing operators and tokens


def parse_scopes(text: str) -> frozenset[Scope]:
    problems = [word for word in text.split() if word not in Scope._value2member_map_]
    if problems:
        known = ", ".join(scope.value for scope in Scope)
        raise ApiError(422, f"unknown scope(s) {', '.join(problems)}; known: {known}")
    return frozenset(Scope(word) for word in text.split())


@dataclass(frozen=True)
class Operator:
    user_id: int
    username: str
    scopes: frozenset[Scope]
    token_id: str | None  # None: a web session
    csrf: str | None = None

    def has(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes

    @property
    def actor(self) -> str:
        via = f" (token {self.token_id})" if self.token_id else ""
        return f"user:{self.username}{via}"


@dataclass(frozen=True)
class Line:
    profile: str
    tenant: str

    @property
    def actor(self) -> str:
        return f"line:{self.profile}"


@dataclass(frozen=True)
class Device:
    unit_id: int
    serial: str
    tenant: str

    @property
    def actor(self) -> str:
        return f"unit:{self.serial}"


def _unauthorized(detail: str, scheme: str = "Bearer") -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": scheme})


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    kind, _, value = header.partition(" ")
    return value.strip() if kind.lower() == "bearer" and value.strip() else None


def _token_operator(request: Request, text: str) -> Operator:
    token = ApiToken.parse(text)
    if token is None:
        raise _unauthorized("malformed API token")
    engine = context_of(request).engine
    with engine.connect() as connection:
        row = connection.execute(
            select(api_tokens, users.c.username, users.c.disabled)
            .join(users, users.c.id == api_tokens.c.user_id)
            .where(api_tokens.c.id == token.token_id)).first()
    now = now_ns()
    if (row is None or not matches(token.secret, row.secret_hash) or row.revoked_ns
            or (row.expires_ns and row.expires_ns < now) or row.disabled):
        raise _unauthorized("invalid, expired or revoked API token")
    return Operator(row.user_id, row.username, frozenset(map(Scope, row.scopes.split())),
                    row.id)


def session_operator(request: Request) -> Operator | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    engine = context_of(request).engine
    with engine.connect() as connection:
        row = connection.execute(
            select(sessions, users.c.username, users.c.scopes, users.c.disabled)
            .join(users, users.c.id == sessions.c.user_id)
            .where(sessions.c.id_hash == digest(cookie))).first()
    if row is None or row.expires_ns < now_ns() or row.disabled:
        return None
    return Operator(row.user_id, row.username, frozenset(map(Scope, row.scopes.split())),
                    None, row.csrf)


def operator(request: Request) -> Operator:
    """The operator making this request, by API token or (for the web UI) session."""
    token = _bearer(request)
    if token is not None:
        return _token_operator(request, token)
    who = session_operator(request)
    if who is None:
        raise _unauthorized("log in or send an API token (Authorization: Bearer kiln_…)")
    if request.method not in _SAFE_METHODS and request.headers.get("x-csrf-token") != who.csrf:
        raise ApiError(403, "missing or wrong X-CSRF-Token for this session")
    return who


def require(scope: Scope) -> Callable[[Request], Operator]:
    """A dependency: the operator, who must hold `scope` (or admin)."""

    def dependency(request: Request) -> Operator:
        who = operator(request)
        if not who.has(scope):
            raise ApiError(403, f"this needs the '{scope.value}' scope")
        return who

    dependency.__name__ = f"require_{scope.name.lower()}"
    return dependency


def basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        username, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, password) if sep else None


def line_for(request: Request, profile: str) -> Line:
    """The factory line of `profile`, authenticated by its line key (HTTP Basic)."""
    credentials = basic_credentials(request)
    realm = (f'Basic realm="kiln {profile}"' if _REALM_NAME.fullmatch(profile)
             else 'Basic realm="kiln"')
    if credentials is None:
        raise _unauthorized(f"profile {profile!r} needs its line key (HTTP Basic)", realm)
    name, key = credentials
    if name != profile or not _REALM_NAME.fullmatch(profile):  # no such profile can exist
        raise _unauthorized(f"wrong line key for profile {profile!r}", realm)
    with context_of(request).engine.connect() as connection:
        row = connection.execute(select(profiles.c.key_hash, profiles.c.tenant)
                                 .where(profiles.c.name == profile)).first()
    if row is None or not matches(key, row.key_hash):
        raise _unauthorized(f"wrong line key for profile {profile!r}", realm)
    return Line(profile, row.tenant)


def any_line(request: Request) -> Line | None:
    credentials = basic_credentials(request)
    return line_for(request, credentials[0]) if credentials is not None else None


def device(request: Request) -> Device | None:
    token = _bearer(request)
    if token is None or not token.startswith(DEVICE_TOKEN_PREFIX):
        return None
    with context_of(request).engine.connect() as connection:
        row = connection.execute(select(units.c.id, units.c.serial, units.c.tenant)
                                 .where(units.c.device_token_hash == digest(token))).first()
    if row is None:
        raise _unauthorized("unknown device token")
    return Device(row.id, row.serial, row.tenant)


def line_or_device(request: Request) -> Line | Device:
    """A unit speaking for itself (device token) or for its line (line key)."""
    found = device(request) or any_line(request)
    if found is None:
        raise _unauthorized("send the profile's line key (HTTP Basic) or the unit's device "
                            "token (Authorization: Bearer kilndev_…)")
    return found


def new_device_token() -> str:
    return DEVICE_TOKEN_PREFIX + new_secret()


def start_session(request: Request, user_id: int) -> tuple[str, str]:
    """Make a session; returns (cookie value, CSRF token)."""
    cookie, csrf = new_secret(), new_secret()
    now = now_ns()
    with context_of(request).engine.begin() as connection:
        connection.execute(sessions.insert().values(
            id_hash=digest(cookie), user_id=user_id, csrf=csrf, created_ns=now,
            expires_ns=now + SESSION_SECONDS * 10**9))
    return cookie, csrf


def end_session(request: Request) -> None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        with context_of(request).engine.begin() as connection:
            connection.execute(update(sessions).where(sessions.c.id_hash == digest(cookie))
                               .values(expires_ns=0))
