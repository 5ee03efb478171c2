"""The web UI's fleet pages: devices (DDI targets), rollouts with the live progress of each
wave, each failed device's log, and the operator's steps (approve, start, pause, resume,
next wave, cancel) as forms that carry the session's CSRF token. A rollout's page follows
its progress live: the script polls `/api/v1/tenants/{tenant}/rollouts/{id}` (the session
cookie is enough for reading)."""

from __future__ import annotations

import json
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from server import audit
from server.auth import Scope
from server.context import context_of
from server.db.schema import rollouts, software_modules, targets
from server.ddi import rollouts as engine
from server.ddi import state
from server.ddi.model import DdiError
from server.ddi.poll import record_changes
from server.routes.ddi import RowId
from server.routes.rollouts import rollout_document
from server.routes.ui import gate, message_page, page

router = APIRouter(prefix="/ui", include_in_schema=False)
TENANT = "default"
Operation = Annotated[str, Path(pattern="^(" + "|".join(engine.OPERATIONS) + ")$")]
STEPS = {  # the buttons a rollout's page offers in each state
    "waiting_approval": ("approve", "cancel"), "ready": ("start", "cancel"),
    "running": ("pause", "next-wave", "cancel"), "paused": ("resume", "next-wave", "cancel"),
}


@router.get("/devices")
def device_list(request: Request, *,
                after: Annotated[str, Query(max_length=128)] = "") -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(
            state.target_query().add_columns(
                software_modules.c.name.label("module_name"),
                software_modules.c.version.label("module_version"))
            .outerjoin(software_modules,
                       software_modules.c.id == targets.c.installed_module_id)
            .where(targets.c.tenant == TENANT, targets.c.controller_id > after)
            .order_by(targets.c.controller_id).limit(100)).all()
    found = [{"controller_id": row.controller_id, "name": row.name,
              "update_mode": row.update_mode, "attributes": json.loads(row.attributes),
              "installed": (f"{row.module_name} {row.module_version}" if row.module_name
                            else ""),
              "last_seen_ns": row.last_seen_ns, "kiln_unit": row.unit_id is not None}
             for row in rows]
    return page(request, "devices.html", who=who, devices=found,
                next_after=found[-1]["controller_id"] if len(found) == 100 else None)


@router.get("/rollouts")
def rollout_list(request: Request) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(select(rollouts).where(rollouts.c.tenant == TENANT)
                                  .order_by(rollouts.c.id.desc()).limit(100)).all()
        found = [rollout_document(connection, row) for row in rows]
    return page(request, "rollouts.html", who=who, rollouts=found)


@router.get("/rollouts/{rollout_id}")
def rollout_page(request: Request, rollout_id: RowId) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        row = connection.execute(select(rollouts).where(rollouts.c.id == rollout_id,
                                                        rollouts.c.tenant == TENANT)).first()
        if row is None:
            return message_page(request, who, status=404, title="No such rollout",
                                message=f"There is no rollout {rollout_id}.")
        document = rollout_document(connection, row)
        module = connection.execute(select(software_modules).where(
            software_modules.c.id == row.module_id)).first()
        failures = engine.failures(connection, rollout_id)
    return page(request, "rollout.html", who=who, rollout=document, failures=failures,
                module=f"{module.name} {module.version}" if module else str(row.module_id),
                steps=STEPS.get(row.state, ()) if who.has(Scope.ROLLOUTS_WRITE) else (),
                api_path=f"/api/v1/tenants/{TENANT}/rollouts/{rollout_id}")


@router.post("/rollouts/{rollout_id}/{operation}")
def rollout_step(request: Request, rollout_id: RowId, operation: Operation,
                 csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    who = gate(request, Scope.ROLLOUTS_WRITE)
    if isinstance(who, Response):
        return who
    if who.csrf is None or not secrets.compare_digest(csrf, who.csrf):
        return message_page(request, who, status=403, title="Not done",
                            message="The request lacked this session's CSRF token; use the "
                                    "buttons on the rollout's page.")
    context = context_of(request)
    try:
        with context.engine.begin() as connection:
            touched = engine.step(connection, tenant=TENANT, rollout_id=rollout_id,
                                  operation=operation, who=who.actor)
            audit.record(connection, actor=who.actor, action=f"rollout.{operation}",
                         target=f"{TENANT}/rollout/{rollout_id}",
                         remote=audit.remote_of(request))
            record_changes(connection, tenant=TENANT, controller_ids=touched)
    except LookupError:
        return message_page(request, who, status=404, title="No such rollout",
                            message=f"There is no rollout {rollout_id}.")
    except DdiError as e:
        return message_page(request, who, status=409, title="Not done", message=str(e))
    for controller_id in touched:
        context.ddi.polls.forget(TENANT, controller_id)
    return RedirectResponse(f"/ui/rollouts/{rollout_id}", status_code=303)
