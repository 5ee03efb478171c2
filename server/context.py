"""What every request handler reaches through `request.app.state.context`: no globals."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy import Engine

from kiln.image.signing import TrustStore
from server.config import ServerConfig
from server.crypto import Escrow
from server.metrics import Metrics

if TYPE_CHECKING:
    from server.ddi.identity import DdiRuntime


@dataclass(frozen=True, kw_only=True)
class AppContext:
    config: ServerConfig
    engine: Engine
    escrow: Escrow
    metrics: Metrics
    ddi: DdiRuntime

    def trust(self) -> TrustStore:
        """The image-signing keys in the trust directory, read afresh (keys may be added)."""
        directory = self.config.effective_trust_dir
        return TrustStore.from_paths([directory])

    def public_url(self, request: Request) -> str:
        """The base URL units and links use: --public-url, else what this request came to."""
        return (self.config.public_url or str(request.base_url)).rstrip("/")


def context_of(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


def now_ns() -> int:
    return time.time_ns()
