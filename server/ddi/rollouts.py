"""Rollouts: a software module taken to the targets a filter picks, wave by wave.

A rollout's targets and their waves are fixed when it is made (sorted by controller id, so
the same fleet splits the same way). Its life:

    waiting_approval ─approve→ ready ─start→ running ─(last wave done)→ finished
                                          ↕ pause/resume    └─(error threshold)→ paused | aborted
    any open state ─cancel→ canceled (open actions are asked to cancel, through cancelAction)

While running, `advance` looks at the current wave after every change (a device's feedback
on one of its actions, an operator's step): when `error_percent` of the wave's targets have
failed it pauses (or aborts) the rollout; when `success_percent` have finished it starts the
next wave. Targets whose update mode takes no rollouts are passed over (recorded as skipped)
and do not count.

Safe with several server workers and with PostgreSQL: every step first locks the rollout's
row (`SELECT … FOR UPDATE`; SQLite's writers are serialised by BEGIN IMMEDIATE), a wave's
`started_ns` is set once by a conditional UPDATE, and a target belongs to a rollout once
(primary key), so no wave starts twice and no device is assigned twice.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select, update

from server.context import now_ns
from server.db.schema import actions, rollout_targets, rollout_waves, rollouts, targets
from server.ddi import state
from server.ddi.model import ActionKind, ActionState, DdiError, MaintenanceWindow

MAX_WAVES = 20


class RolloutState(enum.StrEnum):
    WAITING_APPROVAL = "waiting_approval"
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELED = "canceled"
    ABORTED = "aborted"

    @property
    def ended(self) -> bool:
        return self in {RolloutState.FINISHED, RolloutState.CANCELED, RolloutState.ABORTED}


class OnError(enum.StrEnum):
    PAUSE = "pause"
    ABORT = "abort"


class RolloutError(DdiError):
    """An operator's step that does not fit the rollout's state (answered 409)."""


@dataclass(frozen=True, kw_only=True)
class TargetFilter:
    """Which targets a rollout takes: all of these must hold (empty: no condition)."""

    variant: str | None = None  # the `variant` attribute the device reported
    feed: str | None = None  # the `feed` attribute (a release channel: stable, beta, …)
    attributes: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    controller_ids: tuple[str, ...] = ()

    def matches(self, target: Any) -> bool:
        found: dict[str, str] = json.loads(target.attributes)
        wanted = dict(self.attributes)
        if self.variant is not None:
            wanted["variant"] = self.variant
        if self.feed is not None:
            wanted["feed"] = self.feed
        return (all(found.get(key) == value for key, value in wanted.items())
                and set(self.tags) <= set(json.loads(target.tags))
                and (not self.controller_ids or target.controller_id in self.controller_ids))

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "feed": self.feed, "attributes": self.attributes,
                "tags": list(self.tags), "controller_ids": list(self.controller_ids)}


@dataclass(frozen=True, kw_only=True)
class WaveSpec:
    """A wave's share of the rollout's targets: a percentage of all of them, or a count."""

    percent: int | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if (self.percent is None) == (self.count is None):
            raise DdiError("a wave is given by percent or by count, not both or neither")
        if self.percent is not None and not 1 <= self.percent <= 100:
            raise DdiError("a wave's percent is 1 to 100")
        if self.count is not None and self.count < 1:
            raise DdiError("a wave's count is at least 1")


def wave_sizes(total: int, specs: tuple[WaveSpec, ...]) -> list[int]:
    """How many targets each wave takes; the last wave takes whatever is left. Waves that
    would be empty are dropped."""
    if not specs or len(specs) > MAX_WAVES:
        raise DdiError(f"a rollout has 1 to {MAX_WAVES} waves")
    sizes, left = [], total
    for number, spec in enumerate(specs, start=1):
        if number == len(specs):
            size = left
        elif spec.count is not None:
            size = min(spec.count, left)
        else:
            size = min(left, max(1, (total * (spec.percent or 0) + 99) // 100))
        sizes.append(size)
        left -= size
    return [size for size in sizes if size > 0]


@dataclass(frozen=True, kw_only=True)
class RolloutPlan:
    name: str
    module_id: int
    kind: ActionKind
    target_filter: TargetFilter
    waves: tuple[WaveSpec, ...]
    success_percent: int = 100
    error_percent: int = 20
    on_error: OnError = OnError.PAUSE
    approval_required: bool = False
    maintenance: MaintenanceWindow | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.success_percent <= 100 or not 1 <= self.error_percent <= 100:
            raise DdiError("success_percent and error_percent are 1 to 100")


def create(connection: Connection, *, tenant: str, plan: RolloutPlan, who: str) -> int:
    candidates = connection.execute(select(targets).where(targets.c.tenant == tenant)
                                    .order_by(targets.c.controller_id)).all()
    chosen = [target for target in candidates if plan.target_filter.matches(target)]
    if not chosen:
        raise DdiError("the rollout's filter picks no target")
    sizes = wave_sizes(len(chosen), plan.waves)
    now = now_ns()
    rollout_id: int = connection.execute(rollouts.insert().values(
        tenant=tenant, name=plan.name, module_id=plan.module_id, kind=plan.kind.value,
        target_filter=json.dumps(plan.target_filter.to_json()),
        success_percent=plan.success_percent, error_percent=plan.error_percent,
        on_error=plan.on_error.value, approval_required=plan.approval_required,
        maintenance=json.dumps(plan.maintenance.to_json()) if plan.maintenance else None,
        state=(RolloutState.WAITING_APPROVAL if plan.approval_required
               else RolloutState.READY).value,
        current_wave=0, reason="", created_by=who, created_ns=now, updated_ns=now,
    ).returning(rollouts.c.id)).scalar_one()
    connection.execute(rollout_waves.insert(), [
        {"rollout_id": rollout_id, "number": number, "size": size}
        for number, size in enumerate(sizes, start=1)])
    members, position = [], 0
    for number, size in enumerate(sizes, start=1):
        members += [{"rollout_id": rollout_id, "target_id": target.id, "wave": number}
                    for target in chosen[position:position + size]]
        position += size
    connection.execute(rollout_targets.insert(), members)
    return rollout_id


def locked(connection: Connection, *, tenant: str, rollout_id: int) -> Any:
    """The rollout's row, locked for the rest of the transaction."""
    row = connection.execute(select(rollouts).where(
        rollouts.c.id == rollout_id, rollouts.c.tenant == tenant).with_for_update()).first()
    if row is None:
        raise LookupError(f"rollout {rollout_id}")
    return row


def _set(connection: Connection, rollout_id: int, **values: Any) -> None:
    connection.execute(update(rollouts).where(rollouts.c.id == rollout_id)
                       .values(**values, updated_ns=now_ns()))


def _start_wave(connection: Connection, rollout: Any, number: int, *, who: str) -> list[str]:
    """Assign the wave's targets (exactly once); returns their controller ids."""
    started = connection.execute(update(rollout_waves).where(
        rollout_waves.c.rollout_id == rollout.id, rollout_waves.c.number == number,
        rollout_waves.c.started_ns.is_(None)).values(started_ns=now_ns())).rowcount
    _set(connection, rollout.id, current_wave=number)
    if started != 1:
        return []
    window = (MaintenanceWindow.from_json(json.loads(rollout.maintenance))
              if rollout.maintenance else None)
    members = connection.execute(state.target_query().add_columns(
        rollout_targets.c.action_id.label("rollout_action"))
        .join(rollout_targets, rollout_targets.c.target_id == targets.c.id)
        .where(rollout_targets.c.rollout_id == rollout.id, rollout_targets.c.wave == number)
        .order_by(targets.c.controller_id)).all()
    assigned = []
    confirm = state.tenant_settings(connection, rollout.tenant).confirmation_required
    for target in members:
        if target.rollout_action is not None:
            continue
        try:
            action_id = state.assign(connection, target=target, module_id=rollout.module_id,
                                     kind=ActionKind(rollout.kind),
                                     who=f"rollout {rollout.id} ({who})", maintenance=window,
                                     rollout_id=rollout.id, wave=number, confirm=confirm)
        except state.NotAssignable as e:
            connection.execute(update(rollout_targets).where(
                rollout_targets.c.rollout_id == rollout.id,
                rollout_targets.c.target_id == target.id).values(skipped=str(e)))
            continue
        connection.execute(update(rollout_targets).where(
            rollout_targets.c.rollout_id == rollout.id,
            rollout_targets.c.target_id == target.id).values(action_id=action_id))
        assigned.append(target.controller_id)
    return assigned


@dataclass(frozen=True, kw_only=True)
class WaveProgress:
    number: int
    size: int
    skipped: int
    states: dict[str, int]  # action state → how many
    started_ns: int | None
    finished_ns: int | None

    @property
    def counted(self) -> int:
        return self.size - self.skipped

    @property
    def finished(self) -> int:
        return self.states.get(ActionState.FINISHED, 0)

    @property
    def failed(self) -> int:
        return self.states.get(ActionState.ERROR, 0)

    @property
    def open(self) -> int:
        return sum(n for s, n in self.states.items() if not ActionState(s).closed)

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "size": self.size, "skipped": self.skipped,
                "states": self.states, "finished": self.finished, "failed": self.failed,
                "open": self.open, "started_ns": self.started_ns,
                "finished_ns": self.finished_ns}


def progress(connection: Connection, rollout_id: int) -> list[WaveProgress]:
    waves = connection.execute(select(rollout_waves).where(
        rollout_waves.c.rollout_id == rollout_id).order_by(rollout_waves.c.number)).all()
    counts: dict[int, dict[str, int]] = {}
    for wave, action_state, count in connection.execute(
            select(rollout_targets.c.wave, actions.c.state, func.count())
            .join(actions, actions.c.id == rollout_targets.c.action_id)
            .where(rollout_targets.c.rollout_id == rollout_id)
            .group_by(rollout_targets.c.wave, actions.c.state)):
        counts.setdefault(wave, {})[action_state] = count
    skipped: dict[int, int] = {wave: count for wave, count in connection.execute(
        select(rollout_targets.c.wave, func.count()).where(
            rollout_targets.c.rollout_id == rollout_id, rollout_targets.c.skipped.is_not(None))
        .group_by(rollout_targets.c.wave))}
    return [WaveProgress(number=wave.number, size=wave.size, skipped=skipped.get(wave.number, 0),
                         states=counts.get(wave.number, {}), started_ns=wave.started_ns,
                         finished_ns=wave.finished_ns) for wave in waves]


def _cancel_open(connection: Connection, rollout_id: int, *, who: str) -> list[str]:
    rows = connection.execute(select(actions, targets.c.controller_id)
                              .join(targets, targets.c.id == actions.c.target_id)
                              .where(actions.c.rollout_id == rollout_id,
                                     actions.c.active.is_(True),
                                     actions.c.state != ActionState.CANCELING)).all()
    for row in rows:
        state.request_cancel(connection, action=row, who=who)
    return [row.controller_id for row in rows]


def advance(connection: Connection, *, tenant: str, rollout_id: int,
            who: str = "its thresholds") -> list[str]:
    """Apply the thresholds to the current wave; returns the controllers whose actions
    changed (their cached poll answers are stale)."""
    rollout = locked(connection, tenant=tenant, rollout_id=rollout_id)
    if rollout.state != RolloutState.RUNNING:
        return []
    touched: list[str] = []
    waves = {wave.number: wave for wave in progress(connection, rollout_id)}
    number = rollout.current_wave
    while number in waves:
        wave = waves[number]
        if wave.failed and wave.failed * 100 >= rollout.error_percent * max(wave.counted, 1):
            reason = (f"wave {number}: {wave.failed} of {wave.counted} failed (error "
                      f"threshold {rollout.error_percent}%)")
            if rollout.on_error == OnError.ABORT:
                touched += _cancel_open(connection, rollout_id, who=f"rollout {rollout_id} "
                                        "aborted")
                _set(connection, rollout_id, state=RolloutState.ABORTED.value, reason=reason)
            else:
                _set(connection, rollout_id, state=RolloutState.PAUSED.value, reason=reason)
            return touched
        done = wave.finished * 100 >= rollout.success_percent * wave.counted
        if not done:
            return touched
        if wave.open == 0 and wave.finished_ns is None:
            connection.execute(update(rollout_waves).where(
                rollout_waves.c.rollout_id == rollout_id, rollout_waves.c.number == number)
                .values(finished_ns=now_ns()))
        if number + 1 not in waves:
            if wave.open == 0 and all(w.open == 0 for w in waves.values()):
                _set(connection, rollout_id, state=RolloutState.FINISHED.value,
                     reason="every wave is done")
            return touched
        number += 1
        touched += _start_wave(connection, rollout, number, who=who)
        waves = {wave.number: wave for wave in progress(connection, rollout_id)}
    return touched


def step(connection: Connection, *, tenant: str, rollout_id: int, operation: str,
         who: str) -> list[str]:
    """An operator's step: approve, start, pause, resume, next-wave, cancel."""
    rollout = locked(connection, tenant=tenant, rollout_id=rollout_id)
    current = RolloutState(rollout.state)
    if current.ended:
        raise RolloutError(f"rollout {rollout_id} has ended ({current.value})")

    def expect(*allowed: RolloutState) -> None:
        if current not in allowed:
            raise RolloutError(f"rollout {rollout_id} is {current.value}: {operation} needs "
                               + " or ".join(s.value for s in allowed))

    if operation == "approve":
        expect(RolloutState.WAITING_APPROVAL)
        _set(connection, rollout_id, state=RolloutState.READY.value, approved_by=who)
        return []
    if operation == "start":
        expect(RolloutState.READY)
        _set(connection, rollout_id, state=RolloutState.RUNNING.value, reason="")
        return _start_wave(connection, rollout, 1, who=who) + advance(
            connection, tenant=tenant, rollout_id=rollout_id, who=who)
    if operation == "pause":
        expect(RolloutState.RUNNING)
        _set(connection, rollout_id, state=RolloutState.PAUSED.value, reason=f"paused by {who}")
        return []
    if operation == "resume":
        expect(RolloutState.PAUSED)
        _set(connection, rollout_id, state=RolloutState.RUNNING.value, reason="")
        return advance(connection, tenant=tenant, rollout_id=rollout_id, who=who)
    if operation == "next-wave":
        expect(RolloutState.RUNNING, RolloutState.PAUSED)
        number = rollout.current_wave + 1
        if connection.execute(select(rollout_waves.c.number).where(
                rollout_waves.c.rollout_id == rollout_id,
                rollout_waves.c.number == number)).first() is None:
            raise RolloutError(f"rollout {rollout_id} has no wave {number}")
        _set(connection, rollout_id, state=RolloutState.RUNNING.value, reason="")
        return _start_wave(connection, rollout, number, who=who)
    if operation == "cancel":
        touched = _cancel_open(connection, rollout_id, who=f"rollout {rollout_id} canceled "
                               f"by {who}")
        _set(connection, rollout_id, state=RolloutState.CANCELED.value,
             reason=f"canceled by {who}")
        return touched
    raise RolloutError(f"unknown step {operation!r}")


OPERATIONS = ("approve", "start", "pause", "resume", "next-wave", "cancel")


def failures(connection: Connection, rollout_id: int) -> list[dict[str, Any]]:
    """Each failed device of the rollout with its action's messages (newest first)."""
    rows = connection.execute(select(actions.c.id, actions.c.wave, actions.c.last_message,
                                     targets.c.controller_id)
                              .join(targets, targets.c.id == actions.c.target_id)
                              .where(actions.c.rollout_id == rollout_id,
                                     actions.c.state == ActionState.ERROR)
                              .order_by(actions.c.wave, targets.c.controller_id)).all()
    return [{"controller_id": row.controller_id, "wave": row.wave, "action_id": row.id,
             "last_message": row.last_message,
             "messages": state.history(connection, row.id, limit=20)} for row in rows]
