"""Reading the records: unit search, a unit's story, and the supervisor's day. Shared by the
REST API and the web UI."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, text, tuple_

from server.db.schema import (
    MAX_BIGINT,
    credentials,
    erase_certificates,
    events,
    qa_reports,
    runs,
    units,
)

MAX_PAGE = 500


@dataclass(frozen=True, kw_only=True)
class UnitFilter:
    tenant: str = "default"
    text: str = ""  # part of a serial or a MAC address, or a profile/variant name
    lifecycle: str | None = None
    status: str | None = None
    variant: str | None = None
    profile: str | None = None
    since_ns: int | None = None  # updated at or after
    until_ns: int | None = None  # updated before
    limit: int = 50
    before: tuple[int, int] | None = None  # keyset cursor: (updated_ns, id) of the last row


def unit_summary(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "serial": row["serial"], "profile": row["profile"], "variant": row["variant"],
        "lifecycle": row["lifecycle"], "status": row["status"], "failure": row["failure"],
        "macs": row["macs"].split(), "created_ns": row["created_ns"],
        "updated_ns": row["updated_ns"], "manufactured_ns": row["manufactured_ns"],
    }


def _findable(*texts: str | None) -> bool:
    """No stored serial, MAC, name or run id holds a NUL (they are refused on the way in)
    and PostgreSQL cannot even compare one: looking for a NUL finds nothing."""
    return not any(text and "\x00" in text for text in texts)


def search_units(connection: Connection, spec: UnitFilter) -> tuple[list[dict[str, Any]],
                                                                      str | None]:
    """A page of units, newest activity first, and the cursor of the next page."""
    if not _findable(spec.text, spec.variant, spec.profile):
        return [], None
    conditions = [units.c.tenant == spec.tenant]
    if spec.text:
        needle = spec.text.strip().lower()
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        # SQLite's LIKE ignores ASCII case already (serials are ASCII), and lower() would
        # keep it from matching on the search index alone.
        serial = (units.c.serial if connection.dialect.name == "sqlite"
                  else func.lower(units.c.serial))
        conditions.append(or_(
            serial.like(f"%{escaped}%", escape="\\"),
            units.c.macs.like(f"%{escaped}%", escape="\\"),
            units.c.profile == spec.text.strip(), units.c.variant == spec.text.strip()))
    for column, value in ((units.c.lifecycle, spec.lifecycle), (units.c.status, spec.status),
                          (units.c.variant, spec.variant), (units.c.profile, spec.profile)):
        if value:
            conditions.append(column == value)
    if spec.since_ns is not None:
        conditions.append(units.c.updated_ns >= spec.since_ns)
    if spec.until_ns is not None:
        conditions.append(units.c.updated_ns < spec.until_ns)
    if spec.before is not None:
        updated, unit_id = spec.before
        # a row value: the database seeks to it on the search index instead of filtering
        conditions.append(tuple_(units.c.updated_ns, units.c.id) < tuple_(updated, unit_id))
    limit = max(1, min(spec.limit, MAX_PAGE))
    if connection.dialect.name == "postgresql":
        # Plan this search for its values: once a connection has prepared the statement (after
        # a few runs) PostgreSQL may switch to a generic plan, which for a text search walks
        # the whole index instead of scanning in parallel, two to three times slower.
        connection.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    rows = connection.execute(
        select(units).where(*conditions)
        .order_by(units.c.updated_ns.desc(), units.c.id.desc()).limit(limit + 1)).all()
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = f"{last.updated_ns}.{last.id}"
    return [unit_summary(row._mapping) for row in rows[:limit]], cursor


def parse_cursor(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    updated, _, unit_id = text.partition(".")
    if not (updated.isdigit() and unit_id.isdigit()) \
            or max(int(updated), int(unit_id)) > MAX_BIGINT:
        raise ValueError(f"not a page cursor: {text!r}")
    return int(updated), int(unit_id)


def find_unit(connection: Connection, tenant: str, serial: str) -> Any:
    if not _findable(serial):
        return None
    return connection.execute(select(units).where(units.c.tenant == tenant,
                                                  units.c.serial == serial)).first()


def unit_detail(connection: Connection, unit: Any) -> dict[str, Any]:
    run_rows = connection.execute(select(runs).where(runs.c.unit_id == unit.id)
                                  .order_by(runs.c.started_ns.desc())).all()
    reports = connection.execute(select(qa_reports.c.run_id, qa_reports.c.created_ns)
                                 .where(qa_reports.c.unit_id == unit.id)
                                 .order_by(qa_reports.c.created_ns.desc())).all()
    certificates = connection.execute(
        select(erase_certificates.c.run_id, erase_certificates.c.created_ns)
        .where(erase_certificates.c.unit_id == unit.id)
        .order_by(erase_certificates.c.created_ns.desc())).all()
    escrowed = connection.execute(select(credentials.c.created_ns)
                                  .where(credentials.c.unit_id == unit.id)).scalar()
    return unit_summary(unit._mapping) | {
        "dmi": json.loads(unit.dmi), "hardware": json.loads(unit.hardware),
        "runs": [dict(row._mapping) | {"unit_id": None} for row in run_rows],
        "qa_reports": [dict(row._mapping) for row in reports],
        "erase_certificates": [dict(row._mapping) for row in certificates],
        "credential_escrowed": escrowed is not None,
    }


def latest_qa_report(connection: Connection, unit_id: int) -> dict[str, Any] | None:
    """The QA report of the unit's latest successful manufacture, if any."""
    document = connection.execute(
        select(qa_reports.c.document).where(qa_reports.c.unit_id == unit_id)
        .order_by(qa_reports.c.created_ns.desc()).limit(1)).scalar()
    return None if document is None else dict(json.loads(document))


def event_json(row: Any) -> dict[str, Any]:
    document = {key: getattr(row, key) for key in (
        "id", "run_id", "seq", "timestamp_ns", "type", "name", "message", "received_ns")}
    for key in ("result", "level", "done", "total"):
        if getattr(row, key) is not None:
            document[key] = getattr(row, key)
    return document


def unit_events(connection: Connection, unit_id: int, *, after_id: int = 0,
                run_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    if not _findable(run_id):
        return []
    conditions = [events.c.unit_id == unit_id, events.c.id > after_id]
    if run_id:
        conditions.append(events.c.run_id == run_id)
    rows = connection.execute(select(events).where(*conditions).order_by(events.c.id)
                              .limit(max(1, min(limit, 5000)))).all()
    return [event_json(row) for row in rows]


def start_of_today_ns(now: dt.datetime | None = None) -> int:
    """Midnight of the server's local day, the day a supervisor means by "today"."""
    local = (now or dt.datetime.now().astimezone())
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp()) * 10**9


def day_summary(connection: Connection, tenant: str, since_ns: int) -> dict[str, Any]:
    """How many runs finished since `since_ns`, by kind and status, and the top failures."""
    finished = and_(runs.c.finished_ns >= since_ns, units.c.tenant == tenant)
    counts: dict[str, dict[str, int]] = {}
    for kind, status, count in connection.execute(
            select(runs.c.kind, runs.c.status, func.count())
            .join(units, units.c.id == runs.c.unit_id).where(finished)
            .group_by(runs.c.kind, runs.c.status)):
        counts.setdefault(kind or "unknown", {})[status or "unknown"] = count
    by_stage: Counter[str] = Counter()
    example: dict[str, str] = {}
    for (failure,) in connection.execute(
            select(runs.c.failure).join(units, units.c.id == runs.c.unit_id)
            .where(finished, runs.c.status == "failed")):
        stage, _, message = (failure or "unknown").partition(": ")
        by_stage[stage] += 1
        example.setdefault(stage, message)
    failures = [{"stage": stage, "count": count, "example": example[stage]}
                for stage, count in by_stage.most_common(10)]
    in_progress = connection.execute(
        select(func.count()).select_from(units)
        .where(units.c.tenant == tenant, units.c.status == "started")).scalar()
    return {"since_ns": since_ns, "finished": counts, "top_failures": failures,
            "in_progress": in_progress}
