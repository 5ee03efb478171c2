"""hawkBit's Direct Device Integration API for devices, under
`/{tenant}/controller/v1/{controllerId}` (shared/ddi-checklist.md is the working spec).

The root poll is the hot path: an async handler that answers from the worker's cache
(`server/ddi/poll.py`) without touching the database, and goes to the database (in a
thread) only for a controller it has no fresh answer for. Every other endpoint reads and
writes the records in `server/ddi/state.py` and drops the controller's cached answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import Connection, select
from starlette.concurrency import run_in_threadpool

from server import blobs
from server.context import AppContext, context_of, now_ns
from server.db.schema import artifacts, software_modules
from server.ddi import answers, latest, rollouts, state
from server.ddi.identity import (
    Unauthorized,
    credential_of,
    is_targets_own,
    token_hashes_of,
    vouches_for_any,
)
from server.ddi.model import (
    ActionState,
    DdiError,
    Feedback,
    merged_attributes,
    parse_config_data,
    parse_feedback,
)
from server.ddi.poll import CachedPoll, record_changes
from server.errors import ApiError, not_found
from server.store import BlobStore, StoreError

TENANT_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
CONTROLLER_PATTERN = r"^[A-Za-z0-9._:+@-]{1,128}$"
Tenant = Annotated[str, Path(pattern=TENANT_PATTERN)]
ControllerId = Annotated[str, Path(pattern=CONTROLLER_PATTERN)]
MAX_ID = 2**31 - 1  # the largest id a row of ours has (INTEGER on both databases)
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
ActionId = RowId
ModuleId = RowId
MD5SUM_SUFFIX = ".MD5SUM"
MAX_BODY = 256 * 1024

router = APIRouter(prefix="/{tenant}/controller/v1/{controller_id}",
                   tags=["DDI (devices)"])
T = TypeVar("T")


async def unauthorized_handler(_request: Request, _error: Exception) -> Response:
    return Response(status_code=401)


def where_of(request: Request, tenant: str, controller_id: str) -> answers.ControllerBase:
    return answers.ControllerBase(base=context_of(request).public_url(request), tenant=tenant,
                                  controller_id=controller_id)


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def authenticated_target(request: Request, *, tenant: str, controller_id: str,
                          register: bool) -> Any:
    """The controller's target after checking its credential; a first poll registers it."""
    context = context_of(request)
    credential = credential_of(request, controller_id=controller_id,
                               trusted_proxies=context.config.ddi_trusted_proxies)
    settings = context.ddi.tenants.get(context.engine, tenant)
    for_any = vouches_for_any(credential, settings)
    with context.engine.connect() as connection:
        target = state.find_target(connection, tenant=tenant, controller_id=controller_id)
    if target is not None:
        if for_any or is_targets_own(credential, token_hashes_of(target)):
            return target
        raise Unauthorized
    if not register:
        if for_any:
            raise not_found(f"controller {controller_id!r}")
        raise Unauthorized
    with context.engine.begin() as connection:
        unit_id = None
        if not for_any:
            unit_id = state.unit_with_token(connection, tenant=tenant, serial=controller_id,
                                            token_hash=credential.token_hash)
            if unit_id is None:
                raise Unauthorized
        return state.register_target(connection, tenant=tenant, controller_id=controller_id,
                                     unit_id=unit_id, address=_address(request))


def _fresh_poll(request: Request, *, tenant: str, controller_id: str) -> CachedPoll:
    context = context_of(request)
    target = authenticated_target(request, tenant=tenant, controller_id=controller_id,
                                   register=True)
    settings = context.ddi.tenants.get(context.engine, tenant)
    with context.engine.connect() as connection:
        action = state.current_action(connection, target.id)
    where = where_of(request, tenant, controller_id)
    answer = answers.poll_answer(where, target=target, action=action,
                                 polling_seconds=settings.polling_seconds)
    entry = CachedPoll(target_id=target.id, token_hashes=token_hashes_of(target),
                       base=where.base, body=answer.body, etag=answer.etag,
                       expires=context.ddi.polls.lifetime(answer.valid_until))
    context.ddi.polls.put(tenant, controller_id, entry)
    return entry


def _cached_poll(request: Request, *, tenant: str, controller_id: str) -> CachedPoll | None:
    context = context_of(request)
    entry = context.ddi.polls.get(tenant, controller_id, base=context.public_url(request))
    if entry is None:
        return None
    credential = credential_of(request, controller_id=controller_id,
                               trusted_proxies=context.config.ddi_trusted_proxies)
    if is_targets_own(credential, entry.token_hashes):
        return entry
    settings = context.ddi.tenants.get(context.engine, tenant)
    return entry if vouches_for_any(credential, settings) else None


@router.get("", summary="Root poll: the polling interval and links to what to do next")
async def root_poll(request: Request, tenant: Tenant, controller_id: ControllerId) -> Response:
    entry = _cached_poll(request, tenant=tenant, controller_id=controller_id)
    if entry is None:
        entry = await run_in_threadpool(_fresh_poll, request, tenant=tenant,
                                        controller_id=controller_id)
        context_of(request).metrics.ddi_polls.labels("database").inc()
    else:
        context_of(request).metrics.ddi_polls.labels("cache").inc()
    context_of(request).ddi.seen.record(entry.target_id, at_ns=now_ns(),
                                        address=_address(request))
    headers = {"ETag": entry.etag}
    asked = request.headers.get("if-none-match")
    if asked is not None and (asked.strip() == "*" or entry.etag in
                              [tag.strip().removeprefix("W/") for tag in asked.split(",")]):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)


async def json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None


def changing(request: Request, *, tenant: str, controller_id: str,
              change: Callable[[Connection, Any], T]) -> T:
    """Authenticate, run `change(connection, target)` in one transaction, drop the cached
    answer."""
    context = context_of(request)
    target = authenticated_target(request, tenant=tenant, controller_id=controller_id,
                                   register=False)
    try:
        with context.engine.begin() as connection:
            result = change(connection, target)
            record_changes(connection, tenant=tenant, controller_ids=[controller_id])
            return result
    except DdiError as e:
        raise ApiError(400, str(e)) from None
    except state.ActionGone as e:
        raise ApiError(410, str(e)) from None
    finally:
        context.ddi.polls.forget(tenant, controller_id)


def _rollout_moves(connection: Connection, *, tenant: str, action: Any) -> list[str]:
    """A rollout's action has ended: let its thresholds act (a next wave, a pause). Returns
    the controllers whose actions changed."""
    if action.rollout_id is None:
        return []
    touched = rollouts.advance(connection, tenant=tenant, rollout_id=action.rollout_id)
    record_changes(connection, tenant=tenant, controller_ids=touched)
    return touched


def _forget(request: Request, tenant: str, controller_ids: list[str]) -> None:
    for controller_id in controller_ids:
        context_of(request).ddi.polls.forget(tenant, controller_id)


@router.put("/configData", summary="Report the device's attributes (merge, replace, remove)")
async def config_data(request: Request, tenant: Tenant,
                      controller_id: ControllerId) -> Response:
    try:
        change = parse_config_data(await json_body(request))
    except DdiError as e:
        raise ApiError(400, str(e)) from None

    def store(connection: Connection, target: Any) -> None:
        current = json.loads(target.attributes)
        state.set_attributes(connection, target_id=target.id,
                             attributes=merged_attributes(current, change))
        latest.follow_latest(connection, target=state.find_target(
            connection, tenant=tenant, controller_id=controller_id))

    await run_in_threadpool(changing, request, tenant=tenant, controller_id=controller_id,
                            change=store)
    return Response(status_code=200)


def artifact_documents(connection: Connection, store: BlobStore, *,
                        where: answers.ControllerBase, module_id: int) -> list[dict[str, Any]]:
    documents = []
    for row in state.module_artifacts(connection, module_id):
        try:
            digests = store.digests(row.sha256)
        except StoreError as e:
            raise ApiError(500, f"artifact {row.filename}: {e}") from None
        documents.append(answers.artifact_document(where, module_id=module_id,
                                                   filename=row.filename, digests=digests))
    return documents


def deployment(request: Request, *, tenant: str, controller_id: str, action_id: int,
                history: int, installed: bool) -> dict[str, Any]:
    context = context_of(request)
    target = authenticated_target(request, tenant=tenant, controller_id=controller_id,
                                   register=False)
    with context.engine.connect() as connection:
        if installed:
            action = state.finished_action(connection, target_id=target.id,
                                           action_id=action_id)
        else:
            action = state.action_of(connection, target_id=target.id, action_id=action_id)
            if action is not None and action.state in (ActionState.CANCELING,
                                                       ActionState.CANCELED,
                                                       ActionState.WAITING_CONFIRMATION):
                action = None
        if action is None:
            raise not_found(f"{'installed ' if installed else ''}action {action_id} of "
                            f"controller {controller_id!r}")
        where = where_of(request, tenant, controller_id)
        files = artifact_documents(connection, BlobStore(context.config.store_dir),
                                    where=where, module_id=action.module_id)
        messages = (state.history(connection, action.id,
                                  limit=history if history > 0 else state.MAX_HISTORY)
                    if history else None)
    return answers.deployment_document(where, action=action, files=files, messages=messages)


History = Annotated[int, Query(alias="actionHistory", ge=-1, le=state.MAX_HISTORY)]


@router.get("/deploymentBase/{action_id}", summary="The deployment an action asks for")
def deployment_base(request: Request, tenant: Tenant, controller_id: ControllerId,
                    action_id: ActionId, *, history: History = 0,
                    c: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
    del c  # only makes the URL change when the action does
    return JSONResponse(deployment(request, tenant=tenant, controller_id=controller_id,
                                    action_id=action_id, history=history, installed=False))


Apply = Callable[[Connection, Any, Any, Feedback], ActionState]


async def _take_feedback(request: Request, *, tenant: str, controller_id: str, action_id: int,
                         apply: Apply) -> Response:
    """Parse a feedback, `apply(connection, target, action, feedback)` in one transaction;
    an action that ends lets its rollout move on."""
    try:
        feedback = parse_feedback(await json_body(request))
    except DdiError as e:
        raise ApiError(400, str(e)) from None

    def store(connection: Connection, target: Any) -> list[str]:
        action = state.action_of(connection, target_id=target.id, action_id=action_id)
        if action is None:
            raise not_found(f"action {action_id} of controller {controller_id!r}")
        if apply(connection, target, action, feedback).closed:
            return _rollout_moves(connection, tenant=tenant, action=action)
        return []

    _forget(request, tenant, await run_in_threadpool(
        changing, request, tenant=tenant, controller_id=controller_id, change=store))
    return Response(status_code=200)


@router.post("/deploymentBase/{action_id}/feedback", summary="Progress and result of an action")
async def deployment_feedback(request: Request, tenant: Tenant, controller_id: ControllerId,
                              action_id: ActionId) -> Response:
    def apply(connection: Connection, target: Any, action: Any,
              feedback: Feedback) -> ActionState:
        return state.apply_feedback(connection, target=target, action=action,
                                    feedback=feedback)

    return await _take_feedback(request, tenant=tenant, controller_id=controller_id,
                                action_id=action_id, apply=apply)


def action_in(connection: Connection, *, target_id: int, action_id: int,
              expected: ActionState, what: str) -> Any:
    """The target's action, which must be in the `expected` state (else 404 naming `what`)."""
    action = state.action_of(connection, target_id=target_id, action_id=action_id)
    if action is None or action.state != expected:
        raise not_found(what)
    return action


@router.get("/cancelAction/{action_id}", summary="An action the device is asked to stop")
def cancel_action(request: Request, tenant: Tenant, controller_id: ControllerId,
                  action_id: ActionId) -> JSONResponse:
    target = authenticated_target(request, tenant=tenant, controller_id=controller_id,
                                   register=False)
    with context_of(request).engine.connect() as connection:
        action = action_in(connection, target_id=target.id, action_id=action_id,
                           expected=ActionState.CANCELING,
                           what=f"cancellation of action {action_id}")
    return JSONResponse(answers.cancel_document(action.id))


@router.post("/cancelAction/{action_id}/feedback", summary="The device's answer to a cancel")
async def cancel_feedback(request: Request, tenant: Tenant, controller_id: ControllerId,
                          action_id: ActionId) -> Response:
    def apply(connection: Connection, _target: Any, action: Any,
              feedback: Feedback) -> ActionState:
        if action.active and action.state != ActionState.CANCELING:
            raise not_found(f"cancellation of action {action_id}")
        return state.apply_cancel_feedback(connection, action=action, feedback=feedback)

    return await _take_feedback(request, tenant=tenant, controller_id=controller_id,
                                action_id=action_id, apply=apply)


@router.get("/installedBase/{action_id}", summary="The last finished action: what is installed")
def installed_base(request: Request, tenant: Tenant, controller_id: ControllerId,
                   action_id: ActionId, *, history: History = 0) -> JSONResponse:
    return JSONResponse(deployment(request, tenant=tenant, controller_id=controller_id,
                                    action_id=action_id, history=history, installed=True))


@router.put("/installedBase", summary="Declare what the device runs (name and version)")
async def declare_installed(request: Request, tenant: Tenant,
                            controller_id: ControllerId) -> Response:
    document = await json_body(request)
    if not (isinstance(document, dict) and isinstance(document.get("name"), str)
            and isinstance(document.get("version"), str)):
        raise ApiError(400, "installedBase needs 'name' and 'version' strings")
    name, version = document["name"], document["version"]

    def store(connection: Connection, target: Any) -> bool:
        module = state.find_module(connection, tenant=tenant, name=name, version=version)
        if module is None:
            raise not_found(f"software module {name!r} version {version!r}")
        return state.declare_installed(connection, target=target, module_id=module.id)

    created = await run_in_threadpool(changing, request, tenant=tenant,
                                      controller_id=controller_id, change=store)
    return JSONResponse({"name": name, "version": version}, status_code=201 if created else 200)


def _assigned_module(request: Request, *, tenant: str, controller_id: str,
                     module_id: int) -> None:
    """404 unless an action of this controller names the module."""
    context = context_of(request)
    target = authenticated_target(request, tenant=tenant, controller_id=controller_id,
                                   register=False)
    with context.engine.connect() as connection:
        if not state.module_is_assigned(connection, target_id=target.id, module_id=module_id):
            raise not_found(f"software module {module_id} for controller {controller_id!r}")


@router.get("/softwaremodules/{module_id}/artifacts", summary="A module's artifacts")
def list_artifacts(request: Request, tenant: Tenant, controller_id: ControllerId,
                   module_id: ModuleId) -> JSONResponse:
    context = context_of(request)
    _assigned_module(request, tenant=tenant, controller_id=controller_id, module_id=module_id)
    with context.engine.connect() as connection:
        documents = artifact_documents(connection, BlobStore(context.config.store_dir),
                                        where=where_of(request, tenant, controller_id),
                                        module_id=module_id)
    return JSONResponse(documents)


def _artifact_row(context: AppContext, *, module_id: int, filename: str) -> Any:
    with context.engine.connect() as connection:
        return connection.execute(
            select(artifacts, software_modules.c.created_ns.label("module_created_ns"))
            .join(software_modules, software_modules.c.id == artifacts.c.module_id)
            .where(artifacts.c.module_id == module_id, artifacts.c.filename == filename)
        ).first()


@router.get("/softwaremodules/{module_id}/artifacts/{filename}", response_class=Response,
            summary="Download an artifact (Range, If-Range, If-Match) or its .MD5SUM")
@router.head("/softwaremodules/{module_id}/artifacts/{filename}", response_class=Response)
def download_artifact(request: Request, tenant: Tenant, controller_id: ControllerId,
                      module_id: ModuleId,
                      filename: Annotated[str, Path(max_length=160)]) -> Response:
    context = context_of(request)
    _assigned_module(request, tenant=tenant, controller_id=controller_id, module_id=module_id)
    store = BlobStore(context.config.store_dir)
    row = _artifact_row(context, module_id=module_id, filename=filename)
    if row is None and filename.endswith(MD5SUM_SUFFIX):
        named = filename.removesuffix(MD5SUM_SUFFIX)
        row = _artifact_row(context, module_id=module_id, filename=named)
        if row is not None:
            digests = store.digests(row.sha256)
            return PlainTextResponse(f"{digests.md5}  {named}\n")
    if row is None:
        raise not_found(f"artifact {filename!r} of software module {module_id}")
    digests = store.digests(row.sha256)
    served = blobs.Representation(size=row.size, sha256=row.sha256, filename=row.filename,
                                  modified_seconds=row.created_ns // 10**9,
                                  entity_tag=digests.sha1)
    return blobs.serve(request, path=store.path_of(row.sha256), served=served, multipart=True)

