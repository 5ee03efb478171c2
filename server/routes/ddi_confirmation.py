"""hawkBit DDI's optional user consent (`confirmationBase`): with confirmation required
(the tenant's setting, or the assignment's), a new action waits until the device confirms
it; a device may also consent in advance (auto-confirm), which confirms what waits."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection, select
from starlette.concurrency import run_in_threadpool

from server.context import context_of
from server.db.schema import actions
from server.ddi import answers, state
from server.ddi.model import ActionState, DdiError, parse_confirmation
from server.errors import ApiError, not_found
from server.routes.ddi import (
    ActionId,
    ControllerId,
    Tenant,
    action_in,
    artifact_documents,
    authenticated_target,
    changing,
    json_body,
    where_of,
)
from server.store import BlobStore

router = APIRouter(prefix="/{tenant}/controller/v1/{controller_id}/confirmationBase",
                   tags=["DDI (devices)"])
MAX_TEXT = 512


def _waiting(connection: Connection, target_id: int) -> Any:
    return connection.execute(select(actions.c.id).where(
        actions.c.target_id == target_id, actions.c.active.is_(True),
        actions.c.state == ActionState.WAITING_CONFIRMATION).order_by(actions.c.id)).first()


@router.get("", summary="Auto-confirm state, and the action waiting for consent")
def confirmation_base(request: Request, tenant: Tenant,
                      controller_id: ControllerId) -> JSONResponse:
    target = authenticated_target(request, tenant=tenant, controller_id=controller_id,
                                  register=False)
    with context_of(request).engine.connect() as connection:
        waiting = _waiting(connection, target.id)
        action = (state.action_of(connection, target_id=target.id, action_id=waiting.id)
                  if waiting else None)
    return JSONResponse(answers.confirmation_overview(
        where_of(request, tenant, controller_id), target=target, waiting_action=action))


@router.get("/{action_id}", summary="The action waiting for the device's consent")
def confirmation_action(request: Request, tenant: Tenant, controller_id: ControllerId,
                        action_id: ActionId, *,
                        history: Annotated[int, Query(alias="actionHistory", ge=-1,
                                                      le=state.MAX_HISTORY)] = 0,
                        c: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
    del c
    context = context_of(request)
    target = authenticated_target(request, tenant=tenant, controller_id=controller_id,
                                  register=False)
    with context.engine.connect() as connection:
        action = action_in(connection, target_id=target.id, action_id=action_id,
                           expected=ActionState.WAITING_CONFIRMATION,
                           what=f"action {action_id} waiting for confirmation")
        where = where_of(request, tenant, controller_id)
        files = artifact_documents(connection, BlobStore(context.config.store_dir),
                                   where=where, module_id=action.module_id)
        messages = (state.history(connection, action.id,
                                  limit=history if history > 0 else state.MAX_HISTORY)
                    if history else None)
    return JSONResponse(answers.deployment_document(where, action=action, files=files,
                                                    messages=messages, key="confirmation"))


@router.post("/{action_id}/feedback", summary="The device confirms or denies an action")
async def confirmation_feedback(request: Request, tenant: Tenant,
                                controller_id: ControllerId, action_id: ActionId) -> Response:
    try:
        feedback = parse_confirmation(await json_body(request))
    except DdiError as e:
        raise ApiError(400, str(e)) from None

    def store(connection: Connection, target: Any) -> None:
        action = state.action_of(connection, target_id=target.id, action_id=action_id)
        if action is None:
            raise not_found(f"action {action_id} of controller {controller_id!r}")
        try:
            state.apply_confirmation(connection, action=action, feedback=feedback)
        except state.NotWaiting as e:
            raise ApiError(409, str(e)) from None

    await run_in_threadpool(changing, request, tenant=tenant, controller_id=controller_id,
                            change=store)
    return Response(status_code=200)


def _text(document: Any, key: str) -> str | None:
    value = document.get(key) if isinstance(document, dict) else None
    if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
        raise ApiError(400, f"{key} must be a string of at most {MAX_TEXT} characters")
    return value


@router.post("/activateAutoConfirm", summary="Consent in advance to every action")
async def activate_auto_confirm(request: Request, tenant: Tenant,
                                controller_id: ControllerId) -> Response:
    body = await request.body()
    document = await json_body(request) if body.strip() else {}
    initiator, remark = _text(document, "initiator"), _text(document, "remark")

    def store(connection: Connection, target: Any) -> None:
        state.set_auto_confirm(connection, target=target, active=True, initiator=initiator,
                               remark=remark)

    await run_in_threadpool(changing, request, tenant=tenant, controller_id=controller_id,
                            change=store)
    return Response(status_code=200)


@router.post("/deactivateAutoConfirm", summary="Ask for consent again for every action")
async def deactivate_auto_confirm(request: Request, tenant: Tenant,
                                  controller_id: ControllerId) -> Response:
    def store(connection: Connection, target: Any) -> None:
        state.set_auto_confirm(connection, target=target, active=False)

    await run_in_threadpool(changing, request, tenant=tenant, controller_id=controller_id,
                            change=store)
    return Response(status_code=200)
