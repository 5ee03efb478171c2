"""Operators manage the fleet that speaks DDI: a tenant's DDI settings and gateway token,
targets (devices), software modules and their artifacts, and actions (assign, cancel).

Paths are under `/api/v1/tenants/{tenant}/`. Reading needs `units:read`; every change needs
`rollouts:write` and is audited. A target's token and a gateway token are shown once, when
made; only their digests are kept.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, select, update
from starlette.concurrency import run_in_threadpool

from server import audit, blobs
from server.auth import Operator, Scope, require
from server.context import AppContext, context_of, now_ns
from server.crypto import digest, new_secret
from server.db.schema import action_status, actions, software_modules, targets
from server.ddi import catalog, latest, state
from server.ddi.model import ActionKind, DdiError, MaintenanceWindow, UpdateMode
from server.ddi.poll import record_changes
from server.errors import ApiError, not_found
from server.routes.ddi import CONTROLLER_PATTERN, MAX_ID, TENANT_PATTERN, RowId
from server.routes.images import remove_if_unreferenced, store_of

Tenant = Annotated[str, Path(pattern=TENANT_PATTERN)]
ControllerId = Annotated[str, Path(pattern=CONTROLLER_PATTERN)]
Reader = Annotated[Operator, Depends(require(Scope.UNITS_READ))]
Writer = Annotated[Operator, Depends(require(Scope.ROLLOUTS_WRITE))]
TARGET_TOKEN_PREFIX = "kilntt_"  # noqa: S105 (a prefix, not a secret)
GATEWAY_TOKEN_PREFIX = "kilngw_"  # noqa: S105
MAX_BULK = 10_000

router = APIRouter(prefix="/api/v1/tenants/{tenant}", tags=["fleet"])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DdiSettingsIn(Strict):
    polling_seconds: int = Field(ge=1, le=7 * 86_400)
    trusted_issuers: list[str] = Field(default_factory=list, max_length=64)
    confirmation_required: bool = False  # new actions wait for the device's consent


class NewTarget(Strict):
    controller_id: str = Field(pattern=CONTROLLER_PATTERN)
    name: str | None = Field(default=None, max_length=128)
    update_mode: UpdateMode = UpdateMode.ROLLOUT


class NewTargets(Strict):
    targets: list[NewTarget] = Field(min_length=1, max_length=MAX_BULK)


class TargetChange(Strict):
    name: str | None = Field(default=None, max_length=128)
    update_mode: UpdateMode | None = None
    pinned_module_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    tags: list[str] | None = Field(default=None, max_length=64)


class NewAction(Strict):
    module_id: int = Field(ge=1, le=MAX_ID)
    kind: ActionKind = ActionKind.FORCED
    maintenance: dict[str, Any] | None = None
    confirmation_required: bool | None = None  # None: the tenant's setting


class CancelIn(Strict):
    force: bool = False  # end it now, without the device's word


class NewModule(Strict):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    kind: str = Field(default="os", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    variants: list[str] = Field(default_factory=list, max_length=64)


def _audit(request: Request, connection: Connection, *, who: Operator, action: str,
           target: str, details: dict[str, Any]) -> None:
    audit.record(connection, actor=who.actor, action=action, target=target,
                 remote=audit.remote_of(request), details=details)


def _forget(request: Request, tenant: str, controller_id: str | None = None) -> None:
    polls = context_of(request).ddi.polls
    if controller_id is None:
        polls.forget_tenant(tenant)
        context_of(request).ddi.tenants.forget(tenant)
    else:
        polls.forget(tenant, controller_id)


@router.get("/ddi", summary="The tenant's DDI settings")
def get_settings(request: Request, tenant: Tenant, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        settings = state.tenant_settings(connection, tenant)
    return JSONResponse({"tenant": tenant, "polling_seconds": settings.polling_seconds,
                         "trusted_issuers": sorted(settings.trusted_issuers),
                         "confirmation_required": settings.confirmation_required,
                         "gateway_token": settings.gateway_token_hash is not None})


@router.put("/ddi", summary="Set the polling interval and the trusted certificate issuers")
def put_settings(request: Request, tenant: Tenant, body: DdiSettingsIn,
                 who: Writer) -> JSONResponse:
    with context_of(request).engine.begin() as connection:
        current = state.tenant_settings(connection, tenant)
        state.save_tenant_settings(connection, state.TenantSettings(
            tenant=tenant, gateway_token_hash=current.gateway_token_hash,
            polling_seconds=body.polling_seconds,
            trusted_issuers=frozenset(body.trusted_issuers),
            confirmation_required=body.confirmation_required))
        _audit(request, connection, who=who, action="ddi.settings", target=tenant,
               details=body.model_dump())
        record_changes(connection, tenant=tenant, controller_ids=[None])
    _forget(request, tenant)
    return get_settings(request, tenant, who)


@router.post("/ddi/gateway-token", status_code=201,
             summary="Make a new gateway token (replaces the old one; shown once)")
def new_gateway_token(request: Request, tenant: Tenant, who: Writer) -> JSONResponse:
    token = GATEWAY_TOKEN_PREFIX + new_secret()
    with context_of(request).engine.begin() as connection:
        current = state.tenant_settings(connection, tenant)
        state.save_tenant_settings(connection, state.TenantSettings(
            tenant=tenant, gateway_token_hash=digest(token),
            polling_seconds=current.polling_seconds, trusted_issuers=current.trusted_issuers,
            confirmation_required=current.confirmation_required))
        _audit(request, connection, who=who, action="ddi.gateway-token", target=tenant,
               details={})
        record_changes(connection, tenant=tenant, controller_ids=[None])
    _forget(request, tenant)
    return JSONResponse({"gateway_token": token}, status_code=201)


def _target_json(row: Any) -> dict[str, Any]:
    return {"controller_id": row.controller_id, "name": row.name,
            "update_mode": row.update_mode, "pinned_module_id": row.pinned_module_id,
            "tags": json.loads(row.tags), "attributes": json.loads(row.attributes),
            "installed_module_id": row.installed_module_id,
            "installed_action_id": row.installed_action_id, "address": row.address,
            "auto_confirm": row.auto_confirm,
            "last_seen_ns": row.last_seen_ns, "created_ns": row.created_ns,
            "kiln_unit": row.unit_id is not None}


@router.post("/targets", status_code=201,
             summary="Register devices (up to 10,000); each one's TargetToken is shown once")
def add_targets(request: Request, tenant: Tenant, body: NewTargets, who: Writer) -> JSONResponse:
    ids = [target.controller_id for target in body.targets]
    if len(set(ids)) != len(ids):
        raise ApiError(422, "a controller id is named twice")
    made = []
    with context_of(request).engine.begin() as connection:
        existing = {row.controller_id for row in
                    state.targets_matching(connection, tenant=tenant, controller_ids=ids)}
        if existing:
            raise ApiError(409, f"{len(existing)} controller(s) exist already",
                           problems=sorted(existing)[:20])
        now = now_ns()
        rows = []
        for target in body.targets:
            token = TARGET_TOKEN_PREFIX + new_secret()
            made.append({"controller_id": target.controller_id, "target_token": token})
            rows.append({"tenant": tenant, "controller_id": target.controller_id,
                         "name": target.name or target.controller_id,
                         "token_hash": digest(token), "attributes": "{}",
                         "attributes_requested": True, "update_mode": target.update_mode.value,
                         "tags": "[]", "created_ns": now, "updated_ns": now})
        connection.execute(targets.insert(), rows)
        _audit(request, connection, who=who, action="targets.add", target=tenant,
               details={"count": len(rows), "first": ids[0]})
    return JSONResponse({"targets": made}, status_code=201)


@router.get("/targets", summary="Targets, by controller id")
def list_targets(request: Request, tenant: Tenant, _who: Reader, *,
                 after: Annotated[str, Query(max_length=128)] = "",
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(state.target_query().where(
            targets.c.tenant == tenant, targets.c.controller_id > after)
            .order_by(targets.c.controller_id).limit(limit)).all()
    return JSONResponse({"targets": [_target_json(row) for row in rows],
                         "next": rows[-1].controller_id if len(rows) == limit else None})


def _target_or_404(connection: Connection, tenant: str, controller_id: str) -> Any:
    target = state.find_target(connection, tenant=tenant, controller_id=controller_id)
    if target is None:
        raise not_found(f"target {controller_id!r}")
    return target


def _action_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "module_id": row.module_id, "kind": row.kind, "state": row.state,
            "active": row.active, "rollout_id": row.rollout_id, "wave": row.wave,
            "maintenance": json.loads(row.maintenance) if row.maintenance else None,
            "last_message": row.last_message, "created_by": row.created_by,
            "created_ns": row.created_ns, "updated_ns": row.updated_ns}


@router.get("/targets/{controller_id}", summary="A target, with its actions (newest first)")
def get_target(request: Request, tenant: Tenant, controller_id: ControllerId,
               _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        target = _target_or_404(connection, tenant, controller_id)
        rows = connection.execute(select(actions).where(actions.c.target_id == target.id)
                                  .order_by(actions.c.id.desc()).limit(100)).all()
    return JSONResponse({**_target_json(target), "actions": [_action_json(r) for r in rows]})


@router.patch("/targets/{controller_id}", summary="Rename, tag, or change the update mode")
def change_target(request: Request, tenant: Tenant, controller_id: ControllerId,
                  body: TargetChange, who: Writer) -> JSONResponse:
    changes: dict[str, Any] = {}
    if body.name is not None:
        changes["name"] = body.name
    if body.tags is not None:
        changes["tags"] = json.dumps(sorted(set(body.tags)))
    if body.update_mode is not None:
        changes["update_mode"] = body.update_mode.value
    if body.update_mode is UpdateMode.PINNED and body.pinned_module_id is None:
        raise ApiError(422, "a pinned target needs pinned_module_id")
    if body.pinned_module_id is not None:
        changes["pinned_module_id"] = body.pinned_module_id
    with context_of(request).engine.begin() as connection:
        target = _target_or_404(connection, tenant, controller_id)
        if body.pinned_module_id is not None and _module(connection, tenant,
                                                         body.pinned_module_id) is None:
            raise not_found(f"software module {body.pinned_module_id}")
        if changes:
            connection.execute(update(targets).where(targets.c.id == target.id)
                               .values(**changes, updated_ns=now_ns()))
            _audit(request, connection, who=who, action="target.change",
                   target=f"{tenant}/{controller_id}", details=body.model_dump(
                       exclude_none=True, mode="json"))
            latest.follow_latest(connection, target=_target_or_404(connection, tenant,
                                                                   controller_id))
            record_changes(connection, tenant=tenant, controller_ids=[controller_id])
    _forget(request, tenant, controller_id)
    return get_target(request, tenant, controller_id, who)


def _module(connection: Connection, tenant: str, module_id: RowId) -> Any:
    return connection.execute(select(software_modules).where(
        software_modules.c.id == module_id, software_modules.c.tenant == tenant)).first()


@router.post("/targets/{controller_id}/actions", status_code=201,
             summary="Assign a software module: a new action (older open ones are canceled)")
def assign(request: Request, tenant: Tenant, controller_id: ControllerId, body: NewAction,
           who: Writer) -> JSONResponse:
    try:
        window = (MaintenanceWindow.from_json(body.maintenance)
                  if body.maintenance is not None else None)
    except DdiError as e:
        raise ApiError(422, str(e)) from None
    with context_of(request).engine.begin() as connection:
        target = _target_or_404(connection, tenant, controller_id)
        if _module(connection, tenant, body.module_id) is None:
            raise not_found(f"software module {body.module_id}")
        try:
            action_id = state.assign(connection, target=target, module_id=body.module_id,
                                     kind=body.kind, who=who.actor, maintenance=window,
                                     confirm=body.confirmation_required)
        except state.NotAssignable as e:
            raise ApiError(409, str(e)) from None
        _audit(request, connection, who=who, action="action.assign",
               target=f"{tenant}/{controller_id}",
               details={"action": action_id, "module": body.module_id,
                        "kind": body.kind.value})
        record_changes(connection, tenant=tenant, controller_ids=[controller_id])
        row = connection.execute(select(actions).where(actions.c.id == action_id)).one()
    _forget(request, tenant, controller_id)
    return JSONResponse(_action_json(row), status_code=201)


def _action_or_404(connection: Connection, tenant: str, action_id: RowId) -> Any:
    row = connection.execute(select(actions, targets.c.controller_id)
                             .join(targets, targets.c.id == actions.c.target_id)
                             .where(actions.c.id == action_id,
                                    actions.c.tenant == tenant)).first()
    if row is None:
        raise not_found(f"action {action_id}")
    return row


@router.get("/actions/{action_id}", summary="An action and its whole history")
def get_action(request: Request, tenant: Tenant, action_id: RowId, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        row = _action_or_404(connection, tenant, action_id)
        steps = connection.execute(select(action_status).where(
            action_status.c.action_id == action_id).order_by(action_status.c.id)).all()
    return JSONResponse({**_action_json(row), "controller_id": row.controller_id,
                         "history": [{"at_ns": s.at_ns, "state": s.state, "code": s.code,
                                      "messages": json.loads(s.messages)} for s in steps]})


@router.post("/actions/{action_id}/cancel", summary="Ask the device to cancel (force: now)")
def cancel(request: Request, tenant: Tenant, action_id: RowId, body: CancelIn,
           who: Writer) -> JSONResponse:
    with context_of(request).engine.begin() as connection:
        row = _action_or_404(connection, tenant, action_id)
        if not row.active:
            raise ApiError(409, f"action {action_id} has ended ({row.state})")
        if body.force:
            state.force_cancel(connection, action=row, who=who.actor)
        elif row.state != "canceling":
            state.request_cancel(connection, action=row, who=who.actor)
        _audit(request, connection, who=who, action="action.cancel",
               target=f"{tenant}/{row.controller_id}",
               details={"action": action_id, "force": body.force})
        record_changes(connection, tenant=tenant, controller_ids=[row.controller_id])
    _forget(request, tenant, row.controller_id)
    return get_action(request, tenant, action_id, who)


@router.get("/softwaremodules", summary="Software modules (every image is one), newest first")
def list_modules(request: Request, tenant: Tenant, _who: Reader, *,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(select(software_modules).where(
            software_modules.c.tenant == tenant).order_by(software_modules.c.id.desc())
            .limit(limit)).all()
        found = [catalog.module_json(row, state.module_artifacts(connection, row.id))
                 for row in rows]
    return JSONResponse({"softwaremodules": found})


@router.post("/softwaremodules", status_code=201,
             summary="Make a module by hand (then upload its artifacts)")
def add_module(request: Request, tenant: Tenant, body: NewModule, who: Writer) -> JSONResponse:
    with context_of(request).engine.begin() as connection:
        module_id = catalog.add_module(connection, tenant=tenant, kind=body.kind,
                                       name=body.name, version=body.version,
                                       variants=body.variants, who=who.username)
        _audit(request, connection, who=who, action="module.add", target=str(module_id),
               details=body.model_dump())
        row = _module(connection, tenant, module_id)
    return JSONResponse(catalog.module_json(row, []), status_code=201)


def _put_artifact(context: AppContext, writer: Any, *, tenant: str, module_id: RowId,
                  filename: str, who: Operator, remote: str) -> dict[str, Any]:
    store = store_of(context)
    with store.lock():
        with context.engine.connect() as connection:
            if _module(connection, tenant, module_id) is None:
                raise not_found(f"software module {module_id}")
        blob = writer.commit()
        with context.engine.begin() as connection:
            replaced = catalog.put_artifact(connection, module_id=module_id,
                                            filename=filename, sha256=blob.sha256,
                                            size=blob.size)
            audit.record(connection, actor=who.actor, action="artifact.put",
                         target=f"{module_id}/{filename}", remote=remote,
                         details={"sha256": blob.sha256, "size": blob.size})
            row = _module(connection, tenant, module_id)
            found = catalog.module_json(row, state.module_artifacts(connection, module_id))
        if replaced is not None and replaced != blob.sha256:
            remove_if_unreferenced(context.engine, store, sha256=replaced)
    return found


@router.put("/softwaremodules/{module_id}/artifacts/{filename}", status_code=201,
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}},
            summary="Upload an artifact (the raw file as the body)")
async def put_artifact(request: Request, tenant: Tenant, module_id: RowId,
                       filename: Annotated[str, Path(pattern=r"^[A-Za-z0-9._+-]{1,128}$")],
                       who: Writer) -> JSONResponse:
    context = context_of(request)
    writer = await blobs.receive(request, store_of(context),
                                 max_bytes=context.config.max_upload_bytes)
    try:
        found = await run_in_threadpool(_put_artifact, context, writer, tenant=tenant,
                                        module_id=module_id, filename=filename, who=who,
                                        remote=audit.remote_of(request))
    finally:
        writer.close()
    return JSONResponse(found, status_code=201)
