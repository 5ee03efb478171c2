"""Operators' rollouts: make one (a module, a target filter, waves, thresholds), follow its
waves, read the failures of its devices, and step it (approve, start, pause, resume,
next-wave, cancel). Under `/api/v1/tenants/{tenant}/rollouts`; reading needs `units:read`,
everything else `rollouts:write`, and every step is audited."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, select

from server import audit
from server.auth import Operator, Scope, require
from server.context import context_of
from server.db.schema import rollouts, software_modules
from server.ddi import rollouts as engine_rollouts
from server.ddi.model import ActionKind, DdiError, MaintenanceWindow
from server.ddi.poll import record_changes
from server.ddi.rollouts import OnError, RolloutPlan, TargetFilter, WaveSpec
from server.errors import ApiError, not_found
from server.routes.ddi import MAX_ID, TENANT_PATTERN, RowId

Tenant = Annotated[str, Path(pattern=TENANT_PATTERN)]
Reader = Annotated[Operator, Depends(require(Scope.UNITS_READ))]
Writer = Annotated[Operator, Depends(require(Scope.ROLLOUTS_WRITE))]
Operation = Annotated[str, Path(pattern="^(" + "|".join(engine_rollouts.OPERATIONS) + ")$")]

router = APIRouter(prefix="/api/v1/tenants/{tenant}/rollouts", tags=["rollouts"])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterIn(Strict):
    variant: str | None = Field(default=None, max_length=64)
    feed: str | None = Field(default=None, max_length=64)
    attributes: dict[str, str] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list, max_length=64)
    controller_ids: list[str] = Field(default_factory=list, max_length=100_000)


class WaveIn(Strict):
    percent: int | None = None
    count: int | None = None


class RolloutIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    module_id: int = Field(ge=1, le=MAX_ID)
    kind: ActionKind = ActionKind.FORCED
    target_filter: FilterIn = Field(default_factory=FilterIn)
    waves: list[WaveIn] = Field(min_length=1, max_length=engine_rollouts.MAX_WAVES)
    success_percent: int = 100
    error_percent: int = 20
    on_error: OnError = OnError.PAUSE
    approval_required: bool = False
    maintenance: dict[str, Any] | None = None


def rollout_document(connection: Connection, row: Any) -> dict[str, Any]:
    waves = engine_rollouts.progress(connection, row.id)
    return {"id": row.id, "name": row.name, "module_id": row.module_id, "kind": row.kind,
            "state": row.state, "reason": row.reason, "current_wave": row.current_wave,
            "target_filter": json.loads(row.target_filter),
            "success_percent": row.success_percent, "error_percent": row.error_percent,
            "on_error": row.on_error, "approval_required": row.approval_required,
            "approved_by": row.approved_by,
            "maintenance": json.loads(row.maintenance) if row.maintenance else None,
            "created_by": row.created_by, "created_ns": row.created_ns,
            "updated_ns": row.updated_ns, "targets": sum(w.size for w in waves),
            "waves": [wave.to_json() for wave in waves]}


def _row(connection: Connection, tenant: str, rollout_id: RowId) -> Any:
    row = connection.execute(select(rollouts).where(rollouts.c.id == rollout_id,
                                                    rollouts.c.tenant == tenant)).first()
    if row is None:
        raise not_found(f"rollout {rollout_id}")
    return row


@router.post("", status_code=201, summary="Make a rollout (its targets and waves are fixed now)")
def create_rollout(request: Request, tenant: Tenant, body: RolloutIn,
                   who: Writer) -> JSONResponse:
    try:
        plan = RolloutPlan(
            name=body.name, module_id=body.module_id, kind=body.kind,
            target_filter=TargetFilter(
                variant=body.target_filter.variant, feed=body.target_filter.feed,
                attributes=body.target_filter.attributes,
                tags=tuple(body.target_filter.tags),
                controller_ids=tuple(body.target_filter.controller_ids)),
            waves=tuple(WaveSpec(percent=w.percent, count=w.count) for w in body.waves),
            success_percent=body.success_percent, error_percent=body.error_percent,
            on_error=body.on_error, approval_required=body.approval_required,
            maintenance=(MaintenanceWindow.from_json(body.maintenance)
                         if body.maintenance is not None else None))
    except DdiError as e:
        raise ApiError(422, str(e)) from None
    with context_of(request).engine.begin() as connection:
        if connection.execute(select(software_modules.c.id).where(
                software_modules.c.id == body.module_id,
                software_modules.c.tenant == tenant)).first() is None:
            raise not_found(f"software module {body.module_id}")
        try:
            rollout_id = engine_rollouts.create(connection, tenant=tenant, plan=plan,
                                                who=who.actor)
        except DdiError as e:
            raise ApiError(422, str(e)) from None
        audit.record(connection, actor=who.actor, action="rollout.create",
                     target=f"{tenant}/rollout/{rollout_id}", remote=audit.remote_of(request),
                     details={"name": body.name, "module": body.module_id})
        document = rollout_document(connection, _row(connection, tenant, rollout_id))
    return JSONResponse(document, status_code=201)


@router.get("", summary="Rollouts, newest first")
def list_rollouts(request: Request, tenant: Tenant, _who: Reader, *,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(select(rollouts).where(rollouts.c.tenant == tenant)
                                  .order_by(rollouts.c.id.desc()).limit(limit)).all()
        found = [rollout_document(connection, row) for row in rows]
    return JSONResponse({"rollouts": found})


@router.get("/{rollout_id}", summary="A rollout with the progress of each wave")
def get_rollout(request: Request, tenant: Tenant, rollout_id: RowId,
                _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        return JSONResponse(rollout_document(connection, _row(connection, tenant, rollout_id)))


@router.get("/{rollout_id}/failures", summary="Each failed device and its messages")
def rollout_failures(request: Request, tenant: Tenant, rollout_id: RowId,
                     _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        _row(connection, tenant, rollout_id)
        return JSONResponse({"failures": engine_rollouts.failures(connection, rollout_id)})


@router.post("/{rollout_id}/{operation}",
             summary="Step a rollout: approve, start, pause, resume, next-wave, cancel")
def step_rollout(request: Request, tenant: Tenant, rollout_id: RowId, operation: Operation,
                 who: Writer) -> JSONResponse:
    context = context_of(request)
    with context.engine.begin() as connection:
        try:
            touched = engine_rollouts.step(connection, tenant=tenant, rollout_id=rollout_id,
                                           operation=operation, who=who.actor)
        except LookupError:
            raise not_found(f"rollout {rollout_id}") from None
        except DdiError as e:
            raise ApiError(409, str(e)) from None
        audit.record(connection, actor=who.actor, action=f"rollout.{operation}",
                     target=f"{tenant}/rollout/{rollout_id}", remote=audit.remote_of(request))
        record_changes(connection, tenant=tenant, controller_ids=touched)
        document = rollout_document(connection, _row(connection, tenant, rollout_id))
    for controller_id in touched:
        context.ddi.polls.forget(tenant, controller_id)
    return JSONResponse(document)


