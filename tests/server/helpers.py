"""Shared helpers for the server API tests: units reported by a line, runs of events built
with the device-side contract (`kiln.events.Event`), and looks at the tables underneath."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import LargeBinary, String, Text, select

from kiln.events import Event, EventType, Level, Result
from server.db.schema import events, metadata
from tests.server.conftest import LineLogin


def report_unit(client: TestClient, line: LineLogin, serial: str, *,
                macs: Sequence[str] = (), variant: str | None = "qemu-lab") -> httpx.Response:
    answer: httpx.Response = client.post(f"/mfg/{line.profile}/units", auth=line.auth, json={
        "serial": serial, "variant": variant, "macs": list(macs),
        "dmi": {"sys_vendor": "QEMU"}, "hardware": {"memory_bytes": 2 * 1024**3}})
    assert answer.status_code in (200, 201), answer.text
    return answer


@dataclass
class RunEvents:
    """One run's events, numbered and timestamped like `EventRecorder` does, kept in memory."""

    serial: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_seq: int = 0

    def _emit(self, kind: EventType, name: str, **fields: Any) -> Event:
        event = Event(serial=self.serial, run_id=self.run_id, seq=self.next_seq,
                      timestamp_ns=time.time_ns(), type=kind, name=name, **fields)
        self.next_seq += 1
        return event

    def start(self, name: str, message: str = "") -> Event:
        return self._emit(EventType.START, name, message=message)

    def finish(self, name: str, result: Result = Result.SUCCESS, message: str = "") -> Event:
        return self._emit(EventType.FINISH, name, message=message, result=result)

    def log(self, name: str, message: str, level: Level = Level.INFO) -> Event:
        return self._emit(EventType.LOG, name, message=message, level=level)

    def progress(self, name: str, *, done: int, total: int | None) -> Event:
        return self._emit(EventType.PROGRESS, name, done=done, total=total)

    def whole(self, kind: str, result: Result = Result.SUCCESS, *,
              failing_stage: str = "") -> list[Event]:
        """A complete run of `kind` (manufacture/restore/erase): two stages, then its
        finish; with `failing_stage`, that stage fails and so does the run."""
        found = [self.start(kind), self.start(f"{kind}/validate"),
                 self.finish(f"{kind}/validate")]
        if failing_stage:
            found += [self.start(f"{kind}/{failing_stage}"),
                      self.finish(f"{kind}/{failing_stage}", Result.FAIL, "disk too small")]
        else:
            found += [self.start(f"{kind}/write"), self.log(f"{kind}/write", "writing"),
                      self.finish(f"{kind}/write")]
        found.append(self.finish(kind, Result.FAIL if failing_stage else result))
        return found


def batch(found: Sequence[Event]) -> dict[str, Any]:
    return {"events": [event.to_json() for event in found]}


def post_events(client: TestClient, found: Sequence[Event], *,
                auth: tuple[str, str] | None = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
    answer: httpx.Response = client.post("/api/v1/events", json=batch(found), auth=auth,
                                         headers=headers)
    return answer


def accept(client: TestClient, line: LineLogin, found: Sequence[Event]) -> dict[str, Any]:
    answer = post_events(client, found, auth=line.auth)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def event_rows(app: FastAPI) -> list[dict[str, Any]]:
    """Every stored event, comparable before and after a refused request."""
    with app.state.context.engine.connect() as connection:
        return [dict(row._mapping)
                for row in connection.execute(select(events).order_by(events.c.id))]


def table_rows(app: FastAPI, table_name: str) -> list[dict[str, Any]]:
    table = metadata.tables[table_name]
    with app.state.context.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(select(table))]


def database_text(app: FastAPI) -> list[str]:
    """Every text and binary value in every table (to look for a secret that leaked)."""
    found: list[str] = []
    with app.state.context.engine.connect() as connection:
        for table in metadata.sorted_tables:
            columns = [column for column in table.columns
                       if isinstance(column.type, String | Text | LargeBinary)]
            if not columns:
                continue
            for row in connection.execute(select(*columns)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        found.append(bytes(value).decode("latin-1"))
                    elif value is not None:
                        found.append(str(value))
    return found


def manufacture(client: TestClient, line: LineLogin, serial: str, *,
                result: Result = Result.SUCCESS) -> RunEvents:
    """Report `serial` and send a whole manufacture run ending in `result`."""
    report_unit(client, line, serial)
    run = RunEvents(serial)
    accept(client, line, run.whole("manufacture", result,
                                   failing_stage="partition" if result is Result.FAIL else ""))
    return run


def start_manufacture(client: TestClient, line: LineLogin, serial: str) -> RunEvents:
    """Report `serial` and start its manufacture (the window credentials are handed out in)."""
    report_unit(client, line, serial)
    run = RunEvents(serial)
    accept(client, line, [run.start("manufacture")])
    return run

