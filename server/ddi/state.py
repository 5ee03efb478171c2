"""The DDI records: tenants' settings, targets, actions and their history.

Every function takes an open connection and leaves the transaction to its caller, so a route
or a rollout step makes all its changes in one transaction. The rules of an action's life:

- An assignment makes a new action (its own id and history). A target has at most one action
  being offered; assigning another asks the device to cancel the older one first
  (`canceling`, answered through cancelAction), as hawkBit does without multi-assignment.
- A deployment feedback moves the action (`model.state_after`); `closed` ends it, and a
  successful end records the module as installed on the target and asks the device for its
  attributes again. Feedback on an ended action is refused (410).
- A cancel feedback `closed`/`canceled` ends the action as canceled; `rejected` (or a failure)
  means the device goes on, and the action is offered again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from server.context import now_ns
from server.db.engine import insert_ignoring_duplicates
from server.db.schema import (
    action_status,
    actions,
    artifacts,
    ddi_tenants,
    software_modules,
    targets,
    units,
)
from server.ddi.model import (
    ActionKind,
    ActionState,
    ConfirmationFeedback,
    Consent,
    Execution,
    Feedback,
    Finished,
    MaintenanceWindow,
    UpdateMode,
    state_after,
)

DEFAULT_POLLING_SECONDS = 300
MAX_HISTORY = 100


class ActionGone(Exception):
    """The action has ended: no feedback is taken any more."""


class NotWaiting(Exception):
    """The action does not wait for the device's confirmation."""


class NotAssignable(Exception):
    """The target does not take this assignment (its update mode says no)."""


@dataclass(frozen=True, kw_only=True)
class TenantSettings:
    tenant: str
    gateway_token_hash: str | None
    polling_seconds: int
    trusted_issuers: frozenset[str]
    confirmation_required: bool = False  # new actions wait for the device's consent


def tenant_settings(connection: Connection, tenant: str) -> TenantSettings:
    row = connection.execute(select(ddi_tenants).where(ddi_tenants.c.tenant == tenant)).first()
    if row is None:
        return TenantSettings(tenant=tenant, gateway_token_hash=None,
                              polling_seconds=DEFAULT_POLLING_SECONDS,
                              trusted_issuers=frozenset())
    return TenantSettings(tenant=tenant, gateway_token_hash=row.gateway_token_hash,
                          polling_seconds=row.polling_seconds,
                          trusted_issuers=frozenset(json.loads(row.trusted_issuers)),
                          confirmation_required=row.confirmation_required)


def save_tenant_settings(connection: Connection, settings: TenantSettings) -> None:
    values = {"gateway_token_hash": settings.gateway_token_hash,
              "polling_seconds": settings.polling_seconds,
              "confirmation_required": settings.confirmation_required,
              "trusted_issuers": json.dumps(sorted(settings.trusted_issuers)),
              "updated_ns": now_ns()}
    changed = connection.execute(update(ddi_tenants).where(
        ddi_tenants.c.tenant == settings.tenant).values(**values)).rowcount
    if not changed:
        connection.execute(ddi_tenants.insert().values(tenant=settings.tenant, **values))


def target_query() -> Any:
    """A target with its unit's device token digest (a Kiln unit's TargetToken)."""
    return (select(targets, units.c.device_token_hash.label("unit_token_hash"))
            .outerjoin(units, units.c.id == targets.c.unit_id))


def find_target(connection: Connection, *, tenant: str, controller_id: str) -> Any:
    return connection.execute(target_query().where(
        targets.c.tenant == tenant, targets.c.controller_id == controller_id)).first()


def unit_with_token(connection: Connection, *, tenant: str, serial: str,
                    token_hash: str) -> int | None:
    """The id of the unit `serial` whose device token has this digest."""
    return connection.execute(select(units.c.id).where(
        units.c.tenant == tenant, units.c.serial == serial,
        units.c.device_token_hash == token_hash)).scalar()


def register_target(connection: Connection, *, tenant: str, controller_id: str,
                    unit_id: int | None = None, token_hash: str | None = None,
                    name: str | None = None, mode: UpdateMode = UpdateMode.ROLLOUT,
                    address: str | None = None) -> Any:
    """The target (made now unless it exists: two first polls at once make one)."""
    now = now_ns()
    connection.execute(insert_ignoring_duplicates(connection.engine, targets).values(
        tenant=tenant, controller_id=controller_id, name=name or controller_id,
        token_hash=token_hash, unit_id=unit_id, attributes="{}", attributes_requested=True,
        update_mode=mode.value, tags="[]", auto_confirm=False, address=address,
        last_seen_ns=now,
        created_ns=now, updated_ns=now))
    return find_target(connection, tenant=tenant, controller_id=controller_id)


def enroll_unit(connection: Connection, *, unit: Any) -> None:
    """A unit being manufactured is a DDI target from then on (controller id = serial, its
    device token as TargetToken, its variant as an attribute), so a rollout can take it
    before it ever polls."""
    target = find_target(connection, tenant=unit.tenant, controller_id=unit.serial)
    if target is None:
        target = register_target(connection, tenant=unit.tenant, controller_id=unit.serial,
                                 unit_id=unit.id)
    attributes = {**json.loads(target.attributes), "serial": unit.serial}
    if unit.variant:
        attributes["variant"] = unit.variant
    connection.execute(update(targets).where(targets.c.id == target.id).values(
        unit_id=unit.id, attributes=json.dumps(attributes, sort_keys=True),
        updated_ns=now_ns()))


def current_action(connection: Connection, target_id: int) -> Any:
    """What the device is told about: the oldest action being canceled, else the oldest open
    one (with its module)."""
    rows = connection.execute(
        select(actions, software_modules.c.name.label("module_name"),
               software_modules.c.version.label("module_version"),
               software_modules.c.kind.label("module_kind"))
        .join(software_modules, software_modules.c.id == actions.c.module_id)
        .where(actions.c.target_id == target_id, actions.c.active.is_(True))
        .order_by(actions.c.id)).all()
    canceling = [row for row in rows if row.state == ActionState.CANCELING]
    if canceling:
        return canceling[0]
    return rows[0] if rows else None


def action_of(connection: Connection, *, target_id: int, action_id: int) -> Any:
    return connection.execute(
        select(actions, software_modules.c.name.label("module_name"),
               software_modules.c.version.label("module_version"),
               software_modules.c.kind.label("module_kind"))
        .join(software_modules, software_modules.c.id == actions.c.module_id)
        .where(actions.c.id == action_id, actions.c.target_id == target_id)).first()


def module_artifacts(connection: Connection, module_id: int) -> list[Any]:
    return list(connection.execute(select(artifacts).where(artifacts.c.module_id == module_id)
                                   .order_by(artifacts.c.filename)).all())


def module_is_assigned(connection: Connection, *, target_id: int, module_id: int) -> bool:
    """Whether the device may fetch the module's artifacts: an action of its names it."""
    return connection.execute(select(actions.c.id).where(
        actions.c.target_id == target_id, actions.c.module_id == module_id,
        actions.c.state != ActionState.CANCELED).limit(1)).first() is not None


def history(connection: Connection, action_id: int, *, limit: int) -> list[str]:
    """The action's messages, newest first (`actionHistory`)."""
    rows = connection.execute(select(action_status.c.state, action_status.c.messages)
                              .where(action_status.c.action_id == action_id)
                              .order_by(action_status.c.id.desc())
                              .limit(min(limit, MAX_HISTORY))).all()
    messages: list[str] = []
    for row in rows:
        messages.extend(json.loads(row.messages) or [row.state])
    return messages[:limit]


def add_status(connection: Connection, *, action_id: int, state: ActionState,
               messages: list[str], code: int | None = None) -> None:
    connection.execute(action_status.insert().values(
        action_id=action_id, at_ns=now_ns(), state=state.value, code=code,
        messages=json.dumps(messages)))


def _move(connection: Connection, *, action: Any, state: ActionState, active: bool,
          message: str) -> None:
    connection.execute(update(actions).where(actions.c.id == action.id).values(
        state=state.value, active=active, last_message=message[:2000], updated_ns=now_ns()))


def assign(connection: Connection, *, target: Any, module_id: int, kind: ActionKind,
           who: str, maintenance: MaintenanceWindow | None = None,
           rollout_id: int | None = None, wave: int | None = None,
           confirm: bool | None = None) -> int:
    """A new action installing `module_id` on `target`; older open actions are asked to
    cancel. With `confirm` (None: the tenant's setting) it first waits for the device's
    consent, unless the device consented in advance (auto-confirm). Returns its id."""
    mode = UpdateMode(target.update_mode)
    if mode is UpdateMode.PINNED and module_id != target.pinned_module_id:
        raise NotAssignable(f"target {target.controller_id!r} is pinned to module "
                            f"{target.pinned_module_id}")
    if rollout_id is not None and mode is not UpdateMode.ROLLOUT:
        raise NotAssignable(f"target {target.controller_id!r} takes no rollouts "
                            f"(update mode {mode.value})")
    for older in connection.execute(select(actions).where(
            actions.c.target_id == target.id, actions.c.active.is_(True),
            actions.c.state != ActionState.CANCELING)).all():
        request_cancel(connection, action=older, who=f"a new assignment by {who}")
    if confirm is None:
        confirm = tenant_settings(connection, target.tenant).confirmation_required
    waits = confirm and not target.auto_confirm
    state = ActionState.WAITING_CONFIRMATION if waits else ActionState.RUNNING
    now = now_ns()
    action_id: int = connection.execute(actions.insert().values(
        tenant=target.tenant, target_id=target.id, module_id=module_id, kind=kind.value,
        state=state.value, active=True,
        maintenance=json.dumps(maintenance.to_json()) if maintenance else None,
        rollout_id=rollout_id, wave=wave, last_message="", created_by=who,
        created_ns=now, updated_ns=now).returning(actions.c.id)).scalar_one()
    said = [f"assigned by {who}"]
    if confirm and not waits:
        said.append(f"confirmed in advance (auto-confirm by {target.auto_confirm_by})")
    elif waits:
        said.append("waiting for the device's confirmation")
    add_status(connection, action_id=action_id, state=state, messages=said)
    return action_id


def apply_confirmation(connection: Connection, *, action: Any,
                       feedback: ConfirmationFeedback) -> ActionState:
    """The device's consent: confirmed → the action is offered (deploymentBase); denied →
    it keeps waiting (the operator may cancel it)."""
    if not action.active:
        raise ActionGone(f"action {action.id} has ended ({action.state})")
    if action.state != ActionState.WAITING_CONFIRMATION:
        raise NotWaiting(f"action {action.id} is {action.state}, not waiting for confirmation")
    state = (ActionState.RUNNING if feedback.consent is Consent.CONFIRMED
             else ActionState.WAITING_CONFIRMATION)
    messages = [*feedback.details, f"{feedback.consent.value} by the device"]
    add_status(connection, action_id=action.id, state=state, messages=messages,
               code=feedback.code)
    _move(connection, action=action, state=state, active=True, message=messages[-1])
    return state


def set_auto_confirm(connection: Connection, *, target: Any, active: bool,
                     initiator: str | None = None, remark: str | None = None) -> int:
    """The device consents in advance (or stops); turning it on confirms what waits.
    Returns how many actions that confirmed."""
    connection.execute(update(targets).where(targets.c.id == target.id).values(
        auto_confirm=active, auto_confirm_by=initiator if active else None,
        auto_confirm_remark=remark if active else None, updated_ns=now_ns()))
    if not active:
        return 0
    waiting = connection.execute(select(actions).where(
        actions.c.target_id == target.id, actions.c.active.is_(True),
        actions.c.state == ActionState.WAITING_CONFIRMATION)).all()
    for action in waiting:
        add_status(connection, action_id=action.id, state=ActionState.RUNNING,
                   messages=[f"confirmed by auto-confirm ({initiator or 'the device'})"])
        _move(connection, action=action, state=ActionState.RUNNING, active=True,
              message="confirmed by auto-confirm")
    return len(waiting)


def request_cancel(connection: Connection, *, action: Any, who: str) -> None:
    """Ask the device to stop an open action (it answers through cancelAction feedback)."""
    _move(connection, action=action, state=ActionState.CANCELING, active=True,
          message=f"cancel requested by {who}")
    add_status(connection, action_id=action.id, state=ActionState.CANCELING,
               messages=[f"cancel requested by {who}"])


def force_cancel(connection: Connection, *, action: Any, who: str) -> None:
    """End an action without the device's word (a device that is gone)."""
    _move(connection, action=action, state=ActionState.CANCELED, active=False,
          message=f"canceled by {who} without the device")
    add_status(connection, action_id=action.id, state=ActionState.CANCELED,
               messages=[f"canceled by {who} without the device"])


def _messages(feedback: Feedback) -> list[str]:
    said = [f"{feedback.execution.value}/{feedback.finished.value}"]
    if feedback.progress is not None:
        said[0] += f" {feedback.progress[0]} of {feedback.progress[1]}"
    return [*feedback.details, said[0]]


def apply_feedback(connection: Connection, *, target: Any, action: Any,
                   feedback: Feedback) -> ActionState:
    """A deployment feedback: record it and move the action."""
    if not action.active:
        raise ActionGone(f"action {action.id} has ended ({action.state})")
    state = state_after(feedback.execution, feedback.finished)
    if action.state == ActionState.CANCELING and not state.closed:
        state = ActionState.CANCELING  # the device has not seen the cancel yet
    add_status(connection, action_id=action.id, state=state, messages=_messages(feedback),
               code=feedback.code)
    summary = "; ".join(feedback.details)[:2000] or state.value
    _move(connection, action=action, state=state, active=not state.closed, message=summary)
    if state is ActionState.FINISHED:
        _installed(connection, target=target, action_id=action.id, module_id=action.module_id)
    return state


def _installed(connection: Connection, *, target: Any, action_id: int, module_id: int) -> None:
    connection.execute(update(targets).where(targets.c.id == target.id).values(
        installed_module_id=module_id, installed_action_id=action_id,
        attributes_requested=True, updated_ns=now_ns()))


def apply_cancel_feedback(connection: Connection, *, action: Any,
                          feedback: Feedback) -> ActionState:
    """The device's answer to cancelAction."""
    if not action.active:
        raise ActionGone(f"action {action.id} has ended ({action.state})")
    messages = _messages(feedback)
    done = (feedback.execution is Execution.CANCELED
            or (feedback.execution is Execution.CLOSED and feedback.finished is not
                Finished.FAILURE))
    refused = feedback.execution is Execution.REJECTED or (
        feedback.execution is Execution.CLOSED and feedback.finished is Finished.FAILURE)
    if done:
        state = ActionState.CANCELED
    elif refused:
        add_status(connection, action_id=action.id, state=ActionState.CANCEL_REJECTED,
                   messages=messages, code=feedback.code)
        _move(connection, action=action, state=ActionState.RUNNING, active=True,
              message="the device rejected the cancel")
        return ActionState.RUNNING
    else:
        state = ActionState.CANCELING
    add_status(connection, action_id=action.id, state=state, messages=messages,
               code=feedback.code)
    _move(connection, action=action, state=state, active=not state.closed,
          message="; ".join(feedback.details)[:2000] or state.value)
    return state


def set_attributes(connection: Connection, *, target_id: int,
                   attributes: dict[str, str]) -> None:
    connection.execute(update(targets).where(targets.c.id == target_id).values(
        attributes=json.dumps(attributes, sort_keys=True), attributes_requested=False,
        updated_ns=now_ns()))


def find_module(connection: Connection, *, tenant: str, name: str, version: str) -> Any:
    return connection.execute(select(software_modules).where(
        software_modules.c.tenant == tenant, software_modules.c.name == name,
        software_modules.c.version == version).order_by(software_modules.c.id.desc())).first()


def declare_installed(connection: Connection, *, target: Any, module_id: int) -> bool:
    """The device says what it runs (installedBase PUT): a finished action records it.
    False when that is already what the target has."""
    if target.installed_module_id == module_id:
        return False
    now = now_ns()
    action_id: int = connection.execute(actions.insert().values(
        tenant=target.tenant, target_id=target.id, module_id=module_id,
        kind=ActionKind.FORCED.value, state=ActionState.FINISHED.value, active=False,
        last_message="declared installed by the device", created_by="device",
        created_ns=now, updated_ns=now).returning(actions.c.id)).scalar_one()
    add_status(connection, action_id=action_id, state=ActionState.FINISHED,
               messages=["declared installed by the device"])
    _installed(connection, target=target, action_id=action_id, module_id=module_id)
    return True


def finished_action(connection: Connection, *, target_id: int, action_id: int) -> Any:
    """A finished action of the target, for installedBase/{actionId}."""
    return connection.execute(
        select(actions, software_modules.c.name.label("module_name"),
               software_modules.c.version.label("module_version"),
               software_modules.c.kind.label("module_kind"))
        .join(software_modules, software_modules.c.id == actions.c.module_id)
        .where(actions.c.id == action_id, actions.c.target_id == target_id,
               actions.c.state == ActionState.FINISHED)).first()


def targets_matching(connection: Connection, *, tenant: str, controller_ids: list[str]) -> Any:
    return connection.execute(target_query().where(
        targets.c.tenant == tenant, targets.c.controller_id.in_(controller_ids))).all()

