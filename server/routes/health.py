"""Liveness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from server.context import context_of

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Is the server up and its database reachable?")
def healthz(request: Request) -> JSONResponse:
    try:
        with context_of(request).engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as e:  # any database failure is "not healthy", said plainly
        return JSONResponse({"status": "unhealthy", "database": str(e)}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(context_of(request).metrics.exposition(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
