"""Taking in a batch of events: validate all of it, store what is new, derive the records.

A batch is one run's events in sequence order (the device's spool flushes run by run). It is
checked whole before anything is written: every event against the contract
(`kiln.events.Event`), one serial and one run, strictly increasing sequence numbers, the unit
known and the sender allowed to speak for it, and an event already stored under the same
(run, seq) identical to the one sent again. Then new events are inserted (a duplicate is
ignored: the device may resend freely) and, in the same transaction, the run and unit records
follow: a top-level `start` of manufacture/restore/erase opens a run, its `finish` closes it
as succeeded (success or warn) or failed, the first failing stage is the run's failure, and a
successful manufacture gets its QA report.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Text,
    and_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql

from kiln.events import Event, EventError, EventType, Result
from server.context import now_ns
from server.db.engine import insert_ignoring_duplicates
from server.db.schema import events, qa_reports, runs, units
from server.errors import ApiError
from server.qa import qa_report

MAX_EVENTS = 100
MAX_BATCH_BYTES = 1024 * 1024


class Lifecycle(enum.StrEnum):
    MANUFACTURE = "manufacture"
    RESTORE = "restore"
    ERASE = "erase"


class RunStatus(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Accepted:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class Sender:
    """Who sent the batch: a line may speak for its profile's units, a unit for itself."""

    tenant: str
    profile: str | None = None
    unit_id: int | None = None


def parse_batch(document: Any) -> list[Event]:
    if not isinstance(document, dict) or set(document) != {"events"} \
            or not isinstance(document["events"], list):
        raise ApiError(422, 'a batch is {"events": [event, …]}')
    items = document["events"]
    if not items:
        raise ApiError(422, "a batch holds at least one event")
    if len(items) > MAX_EVENTS:
        raise ApiError(413, f"a batch holds at most {MAX_EVENTS} events, this one {len(items)}")
    problems: list[str] = []
    parsed: list[Event] = []
    for index, item in enumerate(items):
        try:  # the contract's limits are the columns' sizes
            parsed.append(Event.from_json(item))
        except EventError as e:
            problems += [f"events[{index}]: {problem}" for problem in e.problems]
    if problems:
        raise ApiError(422, "invalid events", problems=problems)
    first = parsed[0]
    if any(event.serial != first.serial or event.run_id != first.run_id for event in parsed):
        raise ApiError(422, "a batch carries one unit's one run: serial and run_id differ")
    for before, after in itertools.pairwise(parsed):
        if after.seq <= before.seq:
            raise ApiError(422, f"events out of order: seq {after.seq} follows {before.seq}")
    return parsed


def _row(event: Event, unit_id: int, received: int) -> dict[str, Any]:
    return {
        "unit_id": unit_id, "run_id": event.run_id, "seq": event.seq,
        "timestamp_ns": event.timestamp_ns, "type": event.type.value, "name": event.name,
        "message": event.message, "result": event.result.value if event.result else None,
        "level": event.level.value if event.level else None, "done": event.done,
        "total": event.total, "received_ns": received,
    }


_EVENT_COLUMNS = [column for column in events.columns if column.name != "id"]
# PostgreSQL: a batch in one statement over arrays, not one INSERT per event (executemany);
# a third less CPU on each side of the connection. Text arrays: an over-long value fails on
# assignment to its column rather than being cut to length by a cast.
_INSERT_UNNEST = postgresql.insert(events).from_select(
    [column.name for column in _EVENT_COLUMNS],
    select(*func.unnest(*(
        bindparam(column.name, type_=postgresql.ARRAY(
            Text() if isinstance(column.type, String) else column.type))
        for column in _EVENT_COLUMNS)).table_valued(
            *(column.name for column in _EVENT_COLUMNS)).render_derived().c),
).on_conflict_do_nothing()


def _insert_events(connection: Connection, rows: list[dict[str, Any]]) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(_INSERT_UNNEST, {column.name: [row[column.name] for row in rows]
                                            for column in _EVENT_COLUMNS})
    else:
        connection.execute(insert_ignoring_duplicates(connection.engine, events), rows)


_COMPARED = ("timestamp_ns", "type", "name", "message", "result", "level", "done", "total")


def ingest(engine: Engine, batch: Sequence[Event], sender: Sender) -> Accepted:
    first = batch[0]
    received = now_ns()
    with engine.begin() as connection:
        unit = connection.execute(
            select(units.c.id, units.c.profile).where(
                units.c.tenant == sender.tenant, units.c.serial == first.serial)).first()
        if unit is None:
            raise ApiError(404, f"unknown unit {first.serial!r}: a unit reports itself "
                                "(POST …/units) before it sends events")
        if sender.unit_id is not None and sender.unit_id != unit.id:
            raise ApiError(403, "a device token speaks only for its own unit")
        if sender.profile is not None and unit.profile != sender.profile:
            raise ApiError(403, f"unit {first.serial!r} is not on profile {sender.profile!r}")
        run = connection.execute(select(runs).where(runs.c.run_id == first.run_id)).first()
        if run is not None and run.unit_id != unit.id:
            raise ApiError(409, f"run {first.run_id} belongs to another unit")
        stored = {row.seq: row for row in connection.execute(
            select(events).where(events.c.run_id == first.run_id,
                                 events.c.seq.in_([event.seq for event in batch])))}
        new: list[Event] = []
        for event in batch:
            old = stored.get(event.seq)
            if old is None:
                new.append(event)
                continue
            sent = _row(event, unit.id, received)
            if any(getattr(old, key) != sent[key] for key in _COMPARED):
                raise ApiError(409, f"run {event.run_id} seq {event.seq} already holds a "
                                    "different event")
        if new:
            _insert_events(connection, [_row(event, unit.id, received) for event in new])
            _follow(connection, unit_id=unit.id, run_id=first.run_id, new=new,
                    received=received)
    return Accepted(accepted=len(new), duplicates=len(batch) - len(new))


def _follow(connection: Connection, *, unit_id: int, run_id: str, new: Sequence[Event],
            received: int) -> None:
    """Move the run and the unit along with the events just stored."""
    # Two batches of a new run may arrive at once (a resend while the first is in flight): the
    # run's row is made by whichever comes first, and locked while this batch moves it.
    created = connection.execute(
        insert_ignoring_duplicates(connection.engine, runs)
        .values(run_id=run_id, unit_id=unit_id).returning(runs.c.run_id)).first() is not None
    run = connection.execute(select(runs).where(runs.c.run_id == run_id)
                             .with_for_update()).one()
    state: dict[str, Any] = dict(run._mapping)
    before = dict(state)
    for event in new:
        top = event.name.split("/", 1)[0]
        if top not in Lifecycle._value2member_map_:
            continue
        if state["kind"] is None:
            state["kind"] = top
        if top != state["kind"]:
            continue
        if event.type is EventType.START and event.name == top:
            state["started_ns"] = state["started_ns"] or received
            if state["status"] is None:
                state["status"] = RunStatus.STARTED.value
        elif event.type is EventType.FINISH:
            if event.result is Result.FAIL and state["failure"] is None:
                state["failure"] = f"{event.name}: {event.message}".rstrip(": ")
            if event.name == top:
                state["started_ns"] = state["started_ns"] or received
                state["finished_ns"] = received
                state["status"] = (RunStatus.FAILED if event.result is Result.FAIL
                                   else RunStatus.SUCCEEDED).value
    if state != before:
        connection.execute(update(runs).where(runs.c.run_id == run_id).values(**state))
    values: dict[str, Any] = {"updated_ns": received}
    if (state["kind"] == Lifecycle.MANUFACTURE and state["status"] == RunStatus.SUCCEEDED
            and before["status"] != RunStatus.SUCCEEDED):
        # even when a later run's events came first (the unit rebooted before this flushed)
        values["manufactured_ns"] = received
        _write_qa_report(connection, unit_id=unit_id, run_id=run_id, received=received)
    # Which run is the unit's latest changes only with a run's state or top-level start.
    moved = created or state != before or any(
        event.type is EventType.START and event.name == state["kind"] for event in new)
    if state["kind"] is not None and moved and _latest_run(connection, unit_id) == run_id:
        values |= {"lifecycle": state["kind"], "status": state["status"],
                   "failure": state["failure"] if state["status"] == "failed" else None}
    connection.execute(update(units).where(units.c.id == unit_id).values(**values))


def _latest_run(connection: Connection, unit_id: int) -> str | None:
    """The unit's run whose top-level start is latest on the unit's own clock: the device
    may flush an earlier run's spool after a later run's first events."""
    started = and_(events.c.run_id == runs.c.run_id, events.c.type == EventType.START.value,
                   events.c.name == runs.c.kind)
    latest: str | None = connection.execute(
        select(runs.c.run_id).join(events, started).where(runs.c.unit_id == unit_id)
        .order_by(events.c.timestamp_ns.desc(), events.c.id.desc()).limit(1)).scalar()
    return latest


def _write_qa_report(connection: Connection, *, unit_id: int, run_id: str,
                     received: int) -> None:
    unit = connection.execute(select(units).where(units.c.id == unit_id)).one()
    run = connection.execute(select(runs).where(runs.c.run_id == run_id)).one()
    timeline = connection.execute(
        select(events).where(and_(events.c.run_id == run_id)).order_by(events.c.seq)).all()
    document = qa_report(unit=unit._mapping, run=run._mapping,
                         timeline=[row._mapping for row in timeline], generated_ns=received)
    connection.execute(insert_ignoring_duplicates(connection.engine, qa_reports).values(
        unit_id=unit_id, run_id=run_id, created_ns=received,
        document=json.dumps(document, sort_keys=True)))
