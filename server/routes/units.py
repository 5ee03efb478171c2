"""Operators read the unit records: search, a unit's story, its live log, QA reports, erase
certificates, the day's summary; and reveal a unit's escrowed admin password (audited)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from server import audit
from server.auth import Operator, Scope, require
from server.context import context_of, now_ns
from server.crypto import EscrowError, unopenable
from server.db.schema import MAX_BIGINT, credentials, erase_certificates
from server.db.schema import audit as audit_table
from server.errors import ApiError, not_found
from server.queries import (
    UnitFilter,
    day_summary,
    find_unit,
    latest_qa_report,
    parse_cursor,
    search_units,
    start_of_today_ns,
    unit_detail,
    unit_events,
)

router = APIRouter(prefix="/api/v1", tags=["units"])
Reader = Annotated[Operator, Depends(require(Scope.UNITS_READ))]
TENANT = "default"
STREAM_POLL_SECONDS = 0.5


def _unit_or_404(connection: Any, serial: str) -> Any:
    unit = find_unit(connection, TENANT, serial)
    if unit is None:
        raise not_found(f"unit {serial!r}")
    return unit


@router.get("/units", summary="Search units (newest activity first, keyset pages)")
def list_units(request: Request, _who: Reader, *,
               q: Annotated[str, Query(max_length=128)] = "",
               lifecycle: Annotated[str | None, Query(pattern="^(manufacture|restore|erase)$")]
               = None,
               status: Annotated[str | None, Query(pattern="^(started|succeeded|failed)$")]
               = None,
               variant: Annotated[str | None, Query(max_length=64)] = None,
               profile: Annotated[str | None, Query(max_length=64)] = None,
               since_ns: Annotated[int | None, Query(ge=0, le=MAX_BIGINT)] = None,
               until_ns: Annotated[int | None, Query(ge=0, le=MAX_BIGINT)] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50,
               cursor: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
    try:
        before = parse_cursor(cursor)
    except ValueError as e:
        raise ApiError(422, str(e)) from None
    spec = UnitFilter(tenant=TENANT, text=q, lifecycle=lifecycle, status=status,
                      variant=variant, profile=profile, since_ns=since_ns, until_ns=until_ns,
                      limit=limit, before=before)
    with context_of(request).engine.connect() as connection:
        found, next_cursor = search_units(connection, spec)
    return JSONResponse({"units": found, "next_cursor": next_cursor})


@router.get("/units/{serial}", summary="One unit: hardware, runs, reports, certificates")
def get_unit(request: Request, serial: str, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        return JSONResponse(unit_detail(connection, _unit_or_404(connection, serial)))


@router.get("/units/{serial}/events", summary="A unit's event timeline")
def get_unit_events(request: Request, serial: str, _who: Reader,
                    after: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
                    run_id: Annotated[str | None, Query(max_length=64)] = None,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 1000) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        unit = _unit_or_404(connection, serial)
        return JSONResponse({"events": unit_events(connection, unit.id, after_id=after,
                                                   run_id=run_id, limit=limit)})


@router.get("/units/{serial}/stream", summary="A unit's events as they arrive (server-sent "
            "events; resumes after Last-Event-ID)", response_class=StreamingResponse)
async def stream_unit_events(request: Request, serial: str, _who: Reader,
                             after: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
                             ) -> StreamingResponse:
    engine = context_of(request).engine

    def unit_id() -> int:
        with engine.connect() as connection:
            return int(_unit_or_404(connection, serial).id)

    def fetch(after_id: int, unit: int) -> list[dict[str, Any]]:
        with engine.connect() as connection:
            return unit_events(connection, unit, after_id=after_id, limit=500)

    unit = await run_in_threadpool(unit_id)
    last = request.headers.get("last-event-id", "")
    start = int(last) if last.isdigit() and int(last) <= MAX_BIGINT else after

    async def frames() -> AsyncIterator[str]:
        cursor = start
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            batch = await run_in_threadpool(fetch, cursor, unit)
            for event in batch:
                cursor = event["id"]
                yield f"id: {cursor}\nevent: unit-event\ndata: {json.dumps(event)}\n\n"
            if not batch:
                yield ": keep-alive\n\n"
                await asyncio.sleep(STREAM_POLL_SECONDS)

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/units/{serial}/qa-report", summary="The QA report of the unit's latest "
            "successful manufacture")
def get_qa_report(request: Request, serial: str, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        unit = _unit_or_404(connection, serial)
        report = latest_qa_report(connection, unit.id)
    if report is None:
        raise not_found(f"a QA report for unit {serial!r}")
    return JSONResponse(report)


@router.get("/units/{serial}/erase-certificates", summary="The unit's erase certificates")
def get_erase_certificates(request: Request, serial: str, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        unit = _unit_or_404(connection, serial)
        rows = connection.execute(
            select(erase_certificates).where(erase_certificates.c.unit_id == unit.id)
            .order_by(erase_certificates.c.created_ns.desc())).all()
    return JSONResponse({"certificates": [
        {"run_id": row.run_id, "created_ns": row.created_ns,
         "document": json.loads(row.document)} for row in rows]})


@router.post("/units/{serial}/credentials/reveal",
             summary="Reveal the unit's admin password (needs credentials:reveal; audited)")
def reveal_credentials(request: Request, serial: str,
                       who: Annotated[Operator, Depends(require(Scope.CREDENTIALS_REVEAL))],
                       ) -> JSONResponse:
    context = context_of(request)
    with context.engine.begin() as connection:
        unit = _unit_or_404(connection, serial)
        sealed = connection.execute(select(credentials.c.sealed)
                                    .where(credentials.c.unit_id == unit.id)).scalar()
        if sealed is None:
            raise not_found(f"an escrowed credential for unit {serial!r}")
        try:
            password = context.escrow.open(sealed, context=f"{unit.tenant}/{unit.serial}")
        except EscrowError:
            raise unopenable(serial) from None
        audit.record(connection, actor=who.actor, action="credential.reveal", target=serial,
                     remote=audit.remote_of(request))
    context.metrics.credential_reveals.inc()
    return JSONResponse({"serial": serial, "admin_password": password,
                         "revealed_ns": now_ns()}, headers={"Cache-Control": "no-store"})


@router.get("/stats/today", summary="Today's runs by kind and result, and the top failures")
def stats_today(request: Request, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        return JSONResponse(day_summary(connection, TENANT, start_of_today_ns()))


@router.get("/audit", summary="The audit log (newest first)")
def get_audit(request: Request, _who: Annotated[Operator, Depends(require(Scope.ADMIN))],
              target: Annotated[str | None, Query(max_length=255)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    query = select(audit_table).order_by(audit_table.c.id.desc()).limit(limit)
    if target and "\x00" in target:
        raise ApiError(422, "target: contains a NUL character")
    if target:
        query = query.where(audit_table.c.target == target)
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(query).all()
    return JSONResponse({"entries": [
        dict(row._mapping) | {"details": json.loads(row.details)} for row in rows]})
