"""The server application: `create_app(config)` builds one; `kiln server` runs it.

Routes live in `server/routes/`, one module per area; each exposes `router`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError
from starlette.types import ASGIApp, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from server.config import ServerConfig
from server.context import AppContext
from server.crypto import Escrow
from server.db.engine import make_engine
from server.db.migrate import upgrade
from server.ddi.fastpath import PollFastPath
from server.ddi.identity import PEER_SCOPE_KEY, DdiRuntime, TenantSettingsCache, Unauthorized
from server.ddi.poll import ChangeFeed, PollCache, SeenRecorder
from server.errors import ApiError, api_error_handler, data_error_handler
from server.metrics import Metrics
from server.routes import (
    ddi,
    ddi_confirmation,
    events,
    fleet,
    health,
    images,
    mfg,
    operators,
    profiles,
    rollouts,
    ui,
    ui_fleet,
    units,
)
from server.store import BlobStore

log = logging.getLogger("kiln.server")

DESCRIPTION = """\
The Kiln factory and fleet server. Factory lines fetch manufData and files under `/mfg/`
(HTTP Basic: profile name and line key); units send events and erase certificates under
`/api/v1/` (line key or their device token); operators use `/api/v1/` with
`Authorization: Bearer kiln_…` tokens carrying scopes, or the web UI at `/ui/`.
"""


def prepare(config: ServerConfig) -> None:
    """What happens once before serving, in the parent process: directories, the server
    key, schema migrations."""
    config.validate()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.store_dir.mkdir(parents=True, exist_ok=True)
    BlobStore(config.store_dir).clean()  # uploads a crash cut off
    config.effective_trust_dir.mkdir(parents=True, exist_ok=True)
    Escrow.from_file(config.effective_secret_key_file, create=True)
    engine = make_engine(config.effective_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _ddi_runtime(config: ServerConfig) -> DdiRuntime:
    polls = PollCache(seconds=config.ddi_cache_seconds)
    tenants = TenantSettingsCache(seconds=config.ddi_cache_seconds)
    return DdiRuntime(polls=polls, seen=SeenRecorder(flush_seconds=config.ddi_flush_seconds),
                      tenants=tenants,
                      feed=ChangeFeed(polls=polls, forget_tenant_settings=tenants.forget,
                                      sync_seconds=config.ddi_sync_seconds))


def create_app(config: ServerConfig) -> FastAPI:
    engine = make_engine(config.effective_database_url)
    context = AppContext(
        config=config, engine=engine, metrics=Metrics(),
        escrow=Escrow.from_file(config.effective_secret_key_file, create=False),
        ddi=_ddi_runtime(config),
    )
    app = FastAPI(title="Kiln server", version="1", description=DESCRIPTION,
                  docs_url=None, openapi_url="/api/openapi.json", redoc_url=None)
    app.state.context = context
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(DataError, data_error_handler)
    app.add_exception_handler(Unauthorized, ddi.unauthorized_handler)
    for module in (health, mfg, events, units, profiles, images, operators, fleet, rollouts,
                   ui, ui_fleet, ddi_confirmation, ddi):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"),
              name="static")

    # The API docs page with Swagger UI served from here, not a CDN: a factory LAN is offline.
    app.mount("/api/docs/assets", StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json", title="Kiln server API",
            swagger_js_url="/api/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/api/docs/assets/swagger-ui.css",
            swagger_favicon_url="/api/docs/assets/favicon-32x32.png")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=303)

    @app.middleware("http")
    async def observe(request: Request,
                      call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - started
        route = request.scope.get("route")
        template = getattr(route, "path", "(unmatched)")
        context.metrics.requests.labels(request.method, template,
                                        str(response.status_code)).observe(elapsed)
        log.info("request", extra={
            "method": request.method, "path": request.url.path, "route": template,
            "status": response.status_code, "ms": round(elapsed * 1000, 2),
            "remote": request.client.host if request.client else None})
        return response

    app.add_middleware(PollFastPath)  # outermost: a cached poll skips everything above
    app.router.add_event_handler("startup", lambda: context.ddi.seen.start(engine))
    app.router.add_event_handler("startup", lambda: context.ddi.feed.start(engine))
    app.router.add_event_handler("shutdown", context.ddi.feed.stop)
    app.router.add_event_handler("shutdown", lambda: context.ddi.seen.stop(engine))
    app.router.add_event_handler("shutdown", engine.dispose)
    return app


def _noting_the_peer(app: ASGIApp) -> ASGIApp:
    """Keep the connection's own address (`kiln.peer`) before X-Forwarded-For replaces the
    client's: DDI believes certificate headers only from a trusted proxy's address."""

    async def noted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("client"):
            scope[PEER_SCOPE_KEY] = scope["client"]
        await app(scope, receive, send)

    return noted


def app_from_environment() -> ASGIApp:
    """uvicorn's factory in each worker process (`--workers N`): the application behind
    X-Forwarded-For handling for a proxy on this machine."""
    application = create_app(ServerConfig.from_environment())
    behind_proxy = ProxyHeadersMiddleware(cast(Any, application), trusted_hosts="127.0.0.1")
    return _noting_the_peer(cast(ASGIApp, behind_proxy))
