"""Root polls answered at the ASGI layer, in front of the application: a GET of
`/{tenant}/controller/v1/{controllerId}` whose answer this worker has cached, with a token
that the cached answer (or the tenant's cached gateway token) vouches for, is sent from
memory: no routing, no request object, no database, no log line (polls are counted in
`kiln_ddi_polls`). Anything else — no cached answer, another credential scheme, another base
URL — goes on to the application, which answers it fully and caches the answer for next time.
The checks are the application's own (`identity`), so both paths accept and refuse alike."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from server.crypto import digest
from server.ddi.identity import Credential, is_targets_own, vouches_for_any
from server.ddi.model import AuthScheme

ROOT_POLL = re.compile(r"^/([A-Za-z0-9._-]{1,64})/controller/v1/([A-Za-z0-9._:+@-]{1,128})$")
_WANTED = {b"authorization", b"if-none-match", b"host"}
_SCHEMES = {"targettoken": AuthScheme.TARGET_TOKEN, "gatewaytoken": AuthScheme.GATEWAY_TOKEN}


def _matches_etag(asked: str, etag: str) -> bool:
    return asked.strip() == "*" or etag in [tag.strip().removeprefix("W/")
                                            for tag in asked.split(",")]


class PollFastPath:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        match = ROOT_POLL.match(scope["path"])
        answer = self._answer(scope, match) if match is not None else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, scope: Scope,
                match: re.Match[str]) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        context: Any = scope["app"].state.context
        tenant, controller_id = match.groups()
        entry = context.ddi.polls.peek(tenant, controller_id)
        if entry is None:
            return None
        headers = {name: value.decode("latin-1") for name, value in scope["headers"]
                   if name in _WANTED}
        kind, _, token = headers.get(b"authorization", "").partition(" ")
        scheme = _SCHEMES.get(kind.lower())
        if scheme is None or not token.strip():
            return None
        base = context.config.public_url or (
            f"{scope['scheme']}://{headers.get(b'host', '')}{scope.get('root_path', '')}")
        if base.rstrip("/") != entry.base:
            return None
        credential = Credential(scheme=scheme, token_hash=digest(token.strip()))
        if not is_targets_own(credential, entry.token_hashes):
            settings = context.ddi.tenants.peek(tenant)
            if settings is None or not vouches_for_any(credential, settings):
                return None
        client = scope.get("client")
        context.ddi.seen.record(entry.target_id, at_ns=time.time_ns(),
                                address=client[0] if client else "")
        context.metrics.ddi_polls.labels("cache").inc()
        etag = entry.etag.encode()
        asked = headers.get(b"if-none-match")
        if asked is not None and _matches_etag(asked, entry.etag):
            return 304, [(b"etag", etag)], b""
        return 200, [(b"content-type", b"application/json"),
                     (b"content-length", str(len(entry.body)).encode()),
                     (b"etag", etag)], entry.body
