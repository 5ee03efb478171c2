"""The units API operators read: search and its keyset pages, a unit's record and timeline,
the live event stream, the day's summary and the audit log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from kiln.events import Result
from server.auth import Scope
from server.db.schema import units
from tests.server.conftest import LineLogin, OperatorLogin, example_manufdata, make_operator
from tests.server.helpers import RunEvents, accept, manufacture, report_unit, start_manufacture


def search(client: TestClient, who: OperatorLogin, **params: Any) -> list[str]:
    answer = client.get("/api/v1/units", headers=who.headers, params=params)
    assert answer.status_code == 200, answer.text
    return [unit["serial"] for unit in answer.json()["units"]]


@pytest.fixture
def fleet(client: TestClient, app: FastAPI, line: LineLogin, admin: OperatorLogin) -> None:
    """Units in every state, on two profiles and two variants."""
    manufacture(client, line, "SN-OK-1")
    manufacture(client, line, "SN-BAD-2", result=Result.FAIL)
    start_manufacture(client, line, "SN-RUN-3")
    report_unit(client, line, "SN_X-4", macs=["52:54:00:AA:BB:01"], variant="edge-100")
    other = client.put("/api/v1/profiles/line2", headers=admin.headers,
                       json={"manufdata": example_manufdata()}).json()["line_key"]
    report_unit(client, LineLogin("line2", other), "SNX-5", macs=["52:54:00:cc:dd:02"])


@pytest.mark.usefixtures("fleet")
def test_search_by_serial_or_mac_part(client: TestClient, reader: OperatorLogin) -> None:
    assert search(client, reader, q="bad") == ["SN-BAD-2"]
    assert search(client, reader, q="sn-ok") == ["SN-OK-1"]
    assert search(client, reader, q="AA:bb:01") == ["SN_X-4"]
    assert search(client, reader, q="52:54:00") == ["SNX-5", "SN_X-4"]
    # LIKE's wildcards are taken literally
    assert search(client, reader, q="N_X") == ["SN_X-4"]
    assert search(client, reader, q="%") == []
    assert search(client, reader, q="nothing-like-it") == []


@pytest.mark.usefixtures("fleet")
def test_search_filters(client: TestClient, reader: OperatorLogin) -> None:
    assert search(client, reader, status="failed") == ["SN-BAD-2"]
    assert search(client, reader, status="started") == ["SN-RUN-3"]
    assert set(search(client, reader, lifecycle="manufacture")) == {
        "SN-OK-1", "SN-BAD-2", "SN-RUN-3"}
    assert search(client, reader, lifecycle="manufacture", status="succeeded") == ["SN-OK-1"]
    assert search(client, reader, lifecycle="erase") == []
    assert search(client, reader, variant="edge-100") == ["SN_X-4"]
    assert search(client, reader, profile="line2") == ["SNX-5"]
    assert search(client, reader, q="line2") == ["SNX-5"]  # a profile's name matches too
    every = search(client, reader)
    assert every == ["SNX-5", "SN_X-4", "SN-RUN-3", "SN-BAD-2", "SN-OK-1"]  # newest first


def test_search_since_and_until(client: TestClient, line: LineLogin,
                                reader: OperatorLogin) -> None:
    report_unit(client, line, "SN-EARLY")
    middle = time.time_ns()
    report_unit(client, line, "SN-LATE")
    assert search(client, reader, since_ns=middle) == ["SN-LATE"]
    assert search(client, reader, until_ns=middle) == ["SN-EARLY"]
    assert search(client, reader, since_ns=middle, until_ns=middle) == []


def test_keyset_pages_cover_every_unit_once(client: TestClient, line: LineLogin,
                                            reader: OperatorLogin) -> None:
    serials = {f"SN-PAGE-{index:02d}" for index in range(11)}
    for serial in sorted(serials):
        report_unit(client, line, serial)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        answer = client.get("/api/v1/units", headers=reader.headers, params=params).json()
        seen += [unit["serial"] for unit in answer["units"]]
        pages += 1
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == len(serials)
    assert set(seen) == serials
    assert seen == sorted(serials, reverse=True)


def test_units_with_the_same_update_time_page_by_id(client: TestClient, app: FastAPI,
                                                    line: LineLogin,
                                                    reader: OperatorLogin) -> None:
    for index in range(5):
        report_unit(client, line, f"SN-TIE-{index}")
    with app.state.context.engine.begin() as connection:
        connection.execute(update(units).values(updated_ns=1000))
    first = client.get("/api/v1/units", headers=reader.headers, params={"limit": 2}).json()
    second = client.get("/api/v1/units", headers=reader.headers,
                        params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/api/v1/units", headers=reader.headers,
                       params={"limit": 2, "cursor": second["next_cursor"]}).json()
    serials = [unit["serial"] for page in (first, second, third) for unit in page["units"]]
    assert serials == [f"SN-TIE-{index}" for index in (4, 3, 2, 1, 0)]
    assert third["next_cursor"] is None


@pytest.mark.parametrize("params", [{"cursor": "nonsense"}, {"limit": 0}, {"limit": 501},
                                    {"status": "exploded"}, {"lifecycle": "repair"},
                                    {"since_ns": -1}, {"q": "x" * 129}])
def test_bad_search_parameters_are_422(client: TestClient, reader: OperatorLogin,
                                       params: dict[str, Any]) -> None:
    answer = client.get("/api/v1/units", headers=reader.headers, params=params)
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize("params", [{"q": "SN\x00"}, {"variant": "qemu-lab\x00"},
                                    {"profile": "\x00"}])
def test_looking_for_a_nul_finds_nothing(client: TestClient, line: LineLogin,
                                         admin: OperatorLogin,
                                         params: dict[str, Any]) -> None:
    """No stored name holds one, and PostgreSQL cannot compare one (a 500 before)."""
    run = manufacture(client, line, "SN-1")
    assert search(client, admin, **params) == []
    answer = client.get("/api/v1/units/SN-1/events", headers=admin.headers,
                        params={"run_id": run.run_id + "\x00"})
    assert answer.json() == {"events": []}
    assert client.get("/api/v1/audit", headers=admin.headers,
                      params={"target": "SN\x00"}).status_code == 422


def test_reading_units_needs_the_units_read_scope(client: TestClient, app: FastAPI,
                                                  line: LineLogin) -> None:
    report_unit(client, line, "SN-1")
    uploader = make_operator(app, "uploader", Scope.IMAGES_WRITE)
    for path in ("/api/v1/units", "/api/v1/units/SN-1", "/api/v1/units/SN-1/events",
                 "/api/v1/units/SN-1/stream", "/api/v1/units/SN-1/qa-report",
                 "/api/v1/units/SN-1/erase-certificates", "/api/v1/stats/today"):
        assert client.get(path, headers=uploader.headers).status_code == 403, path
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer kiln_0123456789abcdef_x"}
                          ).status_code == 401, path


def test_unknown_units_are_404(client: TestClient, reader: OperatorLogin) -> None:
    for path in ("/api/v1/units/SN-NONE", "/api/v1/units/SN-NONE/events",
                 "/api/v1/units/SN-NONE/stream", "/api/v1/units/SN-NONE/qa-report",
                 "/api/v1/units/SN-NONE/erase-certificates", "/api/v1/units/a%00b"):
        answer = client.get(path, headers=reader.headers)
        assert answer.status_code == 404, (path, answer.text)


def test_a_units_record(client: TestClient, line: LineLogin, reader: OperatorLogin) -> None:
    run = manufacture(client, line, "SN-1")
    record = client.get("/api/v1/units/SN-1", headers=reader.headers).json()
    assert record["serial"] == "SN-1"
    assert record["profile"] == "line1"
    assert record["variant"] == "qemu-lab"
    assert record["dmi"] == {"sys_vendor": "QEMU"}
    assert record["hardware"] == {"memory_bytes": 2 * 1024**3}
    assert [(r["run_id"], r["kind"], r["status"], r["unit_id"]) for r in record["runs"]] == [
        (run.run_id, "manufacture", "succeeded", None)]
    assert [report["run_id"] for report in record["qa_reports"]] == [run.run_id]
    assert record["credential_escrowed"] is False


def test_a_units_timeline_by_run_and_after(client: TestClient, line: LineLogin,
                                           reader: OperatorLogin) -> None:
    first = manufacture(client, line, "SN-1")
    second = RunEvents("SN-1")
    accept(client, line, second.whole("restore"))
    url = "/api/v1/units/SN-1/events"
    everything = client.get(url, headers=reader.headers).json()["events"]
    assert len(everything) == first.next_seq + second.next_seq
    assert [event["id"] for event in everything] == sorted(event["id"] for event in everything)
    only_second = client.get(url, headers=reader.headers,
                             params={"run_id": second.run_id}).json()["events"]
    assert [event["seq"] for event in only_second] == list(range(second.next_seq))
    after = everything[3]["id"]
    rest = client.get(url, headers=reader.headers, params={"after": after}).json()["events"]
    assert rest == everything[4:]
    limited = client.get(url, headers=reader.headers, params={"limit": 2}).json()["events"]
    assert limited == everything[:2]
    finish = everything[first.next_seq - 1]
    assert (finish["type"], finish["name"], finish["result"]) == (
        "finish", "manufacture", "success")
    assert "level" not in finish


# --- the live stream -------------------------------------------------------------------------

def read_frames(lines: Iterator[str], count: int, *, timeout: float = 10) -> list[dict[str, str]]:
    """The next `count` server-sent events (comments and retry hints skipped)."""
    frames: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        assert time.monotonic() < deadline, f"only {len(frames)} of {count} frames arrived"
        line = next(lines)
        if not line:
            if "data" in fields:
                frames.append(fields)
            fields = {}
        elif not line.startswith((":", "retry:")):
            key, _, value = line.partition(": ")
            fields[key] = value
    return frames


def test_the_stream_sends_stored_and_new_events_and_resumes(
        client: TestClient, line: LineLogin, reader: OperatorLogin) -> None:
    run = start_manufacture(client, line, "SN-1")
    accept(client, line, [run.log("manufacture", "one"), run.log("manufacture", "two")])
    url = "/api/v1/units/SN-1/stream"
    with client.stream("GET", url, headers=reader.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        stored = read_frames(lines, 3)
        assert {frame["event"] for frame in stored} == {"unit-event"}
        assert [json.loads(frame["data"])["seq"] for frame in stored] == [0, 1, 2]
        assert [int(frame["id"]) for frame in stored] == [
            json.loads(frame["data"])["id"] for frame in stored]
        accept(client, line, [run.log("manufacture", "live")])
        (live,) = read_frames(lines, 1)
        assert json.loads(live["data"])["message"] == "live"

    resume = {"Last-Event-ID": stored[1]["id"]} | reader.headers
    with client.stream("GET", url, headers=resume) as response:
        frames = read_frames(response.iter_lines(), 2)
        assert [json.loads(frame["data"])["message"] for frame in frames] == ["two", "live"]


# --- the day and the audit log ---------------------------------------------------------------

@pytest.mark.usefixtures("fleet")
def test_todays_summary(client: TestClient, line: LineLogin, reader: OperatorLogin) -> None:
    manufacture(client, line, "SN-BAD-6", result=Result.FAIL)
    erase = RunEvents("SN-OK-1")
    accept(client, line, erase.whole("erase"))
    summary = client.get("/api/v1/stats/today", headers=reader.headers).json()
    assert summary["finished"] == {"manufacture": {"succeeded": 1, "failed": 2},
                                   "erase": {"succeeded": 1}}
    assert summary["top_failures"] == [{"stage": "manufacture/partition", "count": 2,
                                        "example": "disk too small"}]
    assert summary["in_progress"] == 1
    assert summary["since_ns"] <= time.time_ns()


def test_the_audit_log_is_for_admins(client: TestClient, line: LineLogin,
                                     admin: OperatorLogin, reader: OperatorLogin) -> None:
    report_unit(client, line, "SN-1")
    report_unit(client, line, "SN-2")
    assert client.get("/api/v1/audit", headers=reader.headers).status_code == 403
    entries = client.get("/api/v1/audit", headers=admin.headers).json()["entries"]
    assert [entry["action"] for entry in entries] == ["unit.report", "unit.report",
                                                      "profile.put"]
    assert entries[0]["actor"] == "line:line1"
    only = client.get("/api/v1/audit", headers=admin.headers,
                      params={"target": "SN-1", "limit": 5}).json()["entries"]
    assert [(entry["target"], entry["details"]) for entry in only] == [("SN-1", {})]
