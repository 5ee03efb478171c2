"""Update mode `latest`: a target that always runs the newest module compatible with its
variant. Whenever that may have changed — an image uploaded, the device's attributes
reported, the target switched to `latest` — the newest compatible module is assigned unless
it is installed or already on its way. Compatible: the module names the target's variant, or
`*`; a module that names none is never assigned on its own. "Newest" orders images by
version and build (as the appliance does, never by name); a module made by hand counts by
when it was made."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select

from kiln.image.manifest import version_key
from server.db.schema import actions, images, software_modules, targets
from server.ddi import state
from server.ddi.model import ActionKind, ActionState, UpdateMode

WHO = "update mode latest"


def _order(module: Any) -> tuple[int, tuple[int, ...], int, int]:
    if module.image_version is not None:
        try:
            return (1, version_key(module.image_version), module.image_build, module.id)
        except ValueError:
            pass
    return (0, (), 0, module.id)


def newest_for(connection: Connection, *, tenant: str, variant: str | None) -> Any:
    modules = connection.execute(
        select(software_modules, images.c.version.label("image_version"),
               images.c.build.label("image_build"))
        .outerjoin(images, images.c.id == software_modules.c.image_id)
        .where(software_modules.c.tenant == tenant)).all()
    fitting = [module for module in modules
               if "*" in (found := json.loads(module.variants))
               or (variant is not None and variant in found)]
    return max(fitting, key=_order, default=None)


def follow_latest(connection: Connection, *, target: Any) -> int | None:
    """Assign the newest compatible module to a `latest` target when it lacks it; returns
    the new action's id."""
    if target.update_mode != UpdateMode.LATEST:
        return None
    variant = json.loads(target.attributes).get("variant")
    newest = newest_for(connection, tenant=target.tenant, variant=variant)
    if newest is None or newest.id == target.installed_module_id:
        return None
    under_way = connection.execute(select(actions.c.id).where(
        actions.c.target_id == target.id, actions.c.module_id == newest.id,
        actions.c.active.is_(True), actions.c.state != ActionState.CANCELING)).first()
    if under_way is not None:
        return None
    return state.assign(connection, target=target, module_id=newest.id,
                        kind=ActionKind.FORCED, who=WHO)


def follow_latest_everywhere(connection: Connection, *, tenant: str) -> list[str]:
    """After an upload: every `latest` target of the tenant; returns those assigned."""
    assigned = []
    for target in connection.execute(state.target_query().where(
            targets.c.tenant == tenant, targets.c.update_mode == UpdateMode.LATEST.value)).all():
        if follow_latest(connection, target=target) is not None:
            assigned.append(target.controller_id)
    return assigned
