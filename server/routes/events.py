"""Units report: batched events, and erase certificates."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from kiln.events import MAX_INTEGER, MAX_MESSAGE, MAX_NAME, MAX_RUN_ID, MAX_SERIAL
from server import audit
from server.auth import Device, line_or_device
from server.context import context_of, now_ns
from server.db.engine import insert_ignoring_duplicates
from server.db.schema import erase_certificates
from server.errors import ApiError, not_found
from server.ingest import MAX_BATCH_BYTES, MAX_EVENTS, Sender, ingest, parse_batch
from server.queries import find_unit

router = APIRouter(prefix="/api/v1", tags=["units report"])

MAX_CERTIFICATE_BYTES = 256 * 1024

_NO_NUL = "^[^\\x00]*$"
_EVENT_SCHEMA: dict[str, Any] = {  # kiln.events.Event.from_json is what decides; this documents it
    "type": "object",
    "required": ["serial", "run_id", "seq", "timestamp_ns", "type", "name"],
    "additionalProperties": False,
    "properties": {
        "serial": {"type": "string", "minLength": 1, "maxLength": MAX_SERIAL,
                   "pattern": _NO_NUL},
        "run_id": {"type": "string", "minLength": 1, "maxLength": MAX_RUN_ID,
                   "pattern": _NO_NUL},
        "seq": {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER},
        "timestamp_ns": {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER},
        "type": {"enum": ["start", "finish", "progress", "log"]},
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": _NO_NUL},
        "message": {"type": "string", "maxLength": MAX_MESSAGE, "pattern": _NO_NUL},
        "result": {"enum": ["success", "warn", "fail"]},
        "level": {"enum": ["debug", "info", "warning", "error"]},
        "done": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_INTEGER},
        "total": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_INTEGER},
    },
}
_BATCH_SCHEMA = {
    "type": "object", "required": ["events"], "additionalProperties": False,
    "properties": {"events": {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS,
                              "items": _EVENT_SCHEMA}},
}


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, refused with 413 past `limit` bytes (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
    try:
        return json.loads(body)
    except ValueError as e:
        raise ApiError(400, f"the body is not JSON: {e}") from None


def _sender(who: Any) -> Sender:
    if isinstance(who, Device):
        return Sender(tenant=who.tenant, unit_id=who.unit_id)
    return Sender(tenant=who.tenant, profile=who.profile)


@router.post(
    "/events",
    summary="Store a batch of one run's events (idempotent on run and sequence number)",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _BATCH_SCHEMA}}}},
    responses={200: {"description": '{"accepted": n, "duplicates": m}'}},
)
async def post_events(request: Request) -> JSONResponse:
    who = await run_in_threadpool(line_or_device, request)
    document = await read_json(request, MAX_BATCH_BYTES)
    metrics = context_of(request).metrics
    try:
        batch = parse_batch(document)
        result = await run_in_threadpool(ingest, context_of(request).engine, batch,
                                         _sender(who))
    except ApiError as e:
        metrics.rejected_batches.labels(str(e.status)).inc()
        raise
    metrics.events.inc(result.accepted)
    metrics.duplicate_events.inc(result.duplicates)
    return JSONResponse({"accepted": result.accepted, "duplicates": result.duplicates})


@router.post(
    "/units/{serial}/erase-certificates",
    summary="Store the certificate of a completed data erase",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "required": ["run_id"],
                   "properties": {"run_id": {"type": "string", "minLength": 1,
                                             "maxLength": 64}}}}}}},
    status_code=201,
)
async def post_erase_certificate(request: Request, serial: str) -> JSONResponse:
    who = await run_in_threadpool(line_or_device, request)
    document = await read_json(request, MAX_CERTIFICATE_BYTES)
    if not isinstance(document, dict) or not isinstance(document.get("run_id"), str) \
            or not document["run_id"]:
        raise ApiError(422, 'an erase certificate is a JSON object with a "run_id"')
    if len(document["run_id"]) > 64 or "\x00" in document["run_id"]:
        raise ApiError(422, "run_id: at most 64 characters, none of them NUL")
    return await run_in_threadpool(_store_certificate, request, serial, who, document)


def _store_certificate(request: Request, serial: str, who: Any,
                       document: dict[str, Any]) -> JSONResponse:
    engine = context_of(request).engine
    with engine.begin() as connection:
        unit = find_unit(connection, who.tenant, serial)
        if unit is None:
            raise not_found(f"unit {serial!r}")
        if isinstance(who, Device) and who.unit_id != unit.id:
            raise ApiError(403, "a device token speaks only for its own unit")
        if not isinstance(who, Device) and unit.profile != who.profile:
            raise ApiError(403, f"unit {serial!r} is not on profile {who.profile!r}")
        # RETURNING, not rowcount: psycopg answers -1 for INSERT … ON CONFLICT DO NOTHING
        inserted = connection.execute(
            insert_ignoring_duplicates(engine, erase_certificates).values(
                unit_id=unit.id, run_id=document["run_id"], created_ns=now_ns(),
                document=json.dumps(document, sort_keys=True))
            .returning(erase_certificates.c.id)).first() is not None
        if not inserted:
            stored = connection.execute(
                select(erase_certificates.c.unit_id, erase_certificates.c.document)
                .where(erase_certificates.c.run_id == document["run_id"])).one()
            if stored.unit_id != unit.id or json.loads(stored.document) != document:
                raise ApiError(409, f"run {document['run_id']} already has a different erase "
                                    "certificate")
        else:
            audit.record(connection, actor=who.actor, action="erase.certificate",
                         target=serial, remote=audit.remote_of(request),
                         details={"run_id": document["run_id"]})
    return JSONResponse({"serial": serial, "run_id": document["run_id"],
                         "stored": inserted}, status_code=201 if inserted else 200)
