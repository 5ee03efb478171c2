"""The audit log: who changed what, and every credential reveal."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from sqlalchemy import Connection

from server.context import now_ns
from server.db.schema import audit


def remote_of(request: Request) -> str:
    return request.client.host if request.client else ""


def record(connection: Connection, *, actor: str, action: str, target: str, remote: str = "",
           details: dict[str, Any] | None = None) -> None:
    connection.execute(audit.insert().values(
        at_ns=now_ns(), actor=actor, action=action, target=target, remote=remote,
        details=json.dumps(details or {}, sort_keys=True)))
