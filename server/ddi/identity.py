"""Who is polling: a controller's identity by TargetToken, GatewayToken or a client
certificate vouched for by a trusted proxy (shared/ddi-checklist.md "Auth").

- `TargetToken <token>`: the controller's own token. A Kiln unit's is its device token
  (handed out at manufacture), so a manufactured unit is known on its first poll.
- `GatewayToken <token>`: the tenant's gateway token acts for any controller of the tenant,
  and registers one it has not seen.
- A client certificate: the reverse proxy that terminated TLS sends `X-Controller-Id` (which
  must be the path's controller) and `X-Authority` (the issuer's hash or fingerprint, which
  must be one the tenant trusts); believed only from an address given with
  `--ddi-trusted-proxy`.

Anything else is 401 with no body, and a valid token of one controller never serves another.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine

from server.crypto import digest
from server.ddi import state
from server.ddi.model import AuthScheme
from server.ddi.poll import ChangeFeed, PollCache, SeenRecorder

PEER_SCOPE_KEY = "kiln.peer"  # the connection's own address, before proxy headers apply


class Unauthorized(Exception):
    pass


@dataclass(frozen=True, kw_only=True)
class Credential:
    scheme: AuthScheme
    token_hash: str = ""  # TargetToken or GatewayToken digest
    authority: str = ""  # client certificate issuer, from a trusted proxy


def credential_of(request: Request, *, controller_id: str,
                  trusted_proxies: tuple[str, ...]) -> Credential:
    header = request.headers.get("authorization", "")
    kind, _, value = header.partition(" ")
    value = value.strip()
    if kind.lower() == "targettoken" and value:
        return Credential(scheme=AuthScheme.TARGET_TOKEN, token_hash=digest(value))
    if kind.lower() == "gatewaytoken" and value:
        return Credential(scheme=AuthScheme.GATEWAY_TOKEN, token_hash=digest(value))
    vouched = request.headers.get("x-controller-id")
    authority = request.headers.get("x-authority", "").strip()
    peer = request.scope.get(PEER_SCOPE_KEY) or request.scope.get("client")
    if (vouched is not None and authority and peer and peer[0] in trusted_proxies
            and vouched == controller_id):
        return Credential(scheme=AuthScheme.CERTIFICATE, authority=authority)
    raise Unauthorized


class TenantSettingsCache:
    def __init__(self, *, seconds: float):
        self.seconds = seconds
        self._entries: dict[str, tuple[state.TenantSettings, float]] = {}

    def get(self, engine: Engine, tenant: str) -> state.TenantSettings:
        found = self._entries.get(tenant)
        if found is not None and found[1] >= time.monotonic():
            return found[0]
        with engine.connect() as connection:
            settings = state.tenant_settings(connection, tenant)
        self._entries[tenant] = (settings, time.monotonic() + self.seconds)
        return settings

    def forget(self, tenant: str) -> None:
        self._entries.pop(tenant, None)

    def peek(self, tenant: str) -> state.TenantSettings | None:
        """The cached settings, if fresh (never reads the database)."""
        found = self._entries.get(tenant)
        return found[0] if found is not None and found[1] >= time.monotonic() else None


def vouches_for_any(credential: Credential, settings: state.TenantSettings) -> bool:
    """Whether the credential acts for every controller of the tenant (and may register one)."""
    if credential.scheme is AuthScheme.GATEWAY_TOKEN:
        return settings.gateway_token_hash is not None and hmac.compare_digest(
            credential.token_hash, settings.gateway_token_hash)
    if credential.scheme is AuthScheme.CERTIFICATE:
        return credential.authority in settings.trusted_issuers
    return False


def is_targets_own(credential: Credential, token_hashes: frozenset[str]) -> bool:
    return credential.scheme is AuthScheme.TARGET_TOKEN and any(
        hmac.compare_digest(credential.token_hash, known) for known in token_hashes)


def token_hashes_of(target: object) -> frozenset[str]:
    return frozenset(h for h in (getattr(target, "token_hash", None),
                                 getattr(target, "unit_token_hash", None)) if h)


@dataclass(frozen=True, kw_only=True)
class DdiRuntime:
    """The DDI's per-worker state, on the app's context."""

    polls: PollCache
    seen: SeenRecorder
    tenants: TenantSettingsCache
    feed: ChangeFeed
