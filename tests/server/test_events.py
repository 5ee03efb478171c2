"""POST /api/v1/events: batches are checked whole, stored once per (run, seq), and move the
run and unit records along; every refused batch leaves the events table as it was."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiln.events import Event, EventRecorder, EventSpool, Level, Result
from tests.server.conftest import LineLogin, OperatorLogin, example_manufdata
from tests.server.helpers import (
    RunEvents,
    accept,
    batch,
    event_rows,
    post_events,
    report_unit,
    start_manufacture,
    table_rows,
)


def refused(client: TestClient, app: FastAPI, body: Any, *, status: int,
            auth: tuple[str, str] | None = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
    """POST `body`; it must be refused with `status` and the events table stay as it was."""
    before = event_rows(app)
    answer: httpx.Response = client.post("/api/v1/events", json=body, auth=auth,
                                         headers=headers)
    assert answer.status_code == status, answer.text
    assert "detail" in answer.json()
    assert event_rows(app) == before
    return answer


@pytest.fixture
def unit(client: TestClient, line: LineLogin) -> str:
    report_unit(client, line, "SN-EV-1")
    return "SN-EV-1"


def unit_record(client: TestClient, admin: OperatorLogin, serial: str) -> dict[str, Any]:
    answer = client.get(f"/api/v1/units/{serial}", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


# --- idempotency ------------------------------------------------------------------------------

def test_a_batch_is_stored_once_and_resending_it_adds_nothing(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    run = RunEvents(unit)
    found = run.whole("manufacture")
    assert accept(client, line, found) == {"accepted": len(found), "duplicates": 0}
    stored = event_rows(app)
    assert len(stored) == len(found)

    assert accept(client, line, found) == {"accepted": 0, "duplicates": len(found)}
    assert event_rows(app) == stored


def test_an_overlapping_resend_stores_only_the_new_events(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    run = RunEvents(unit)
    found = [run.start("manufacture")] + [run.log("manufacture", f"line {n}") for n in range(8)]
    assert accept(client, line, found[:6]) == {"accepted": 6, "duplicates": 0}
    assert accept(client, line, found[3:]) == {"accepted": 3, "duplicates": 3}
    assert [row["seq"] for row in event_rows(app)] == list(range(9))


def test_a_changed_event_under_a_stored_run_and_seq_is_a_conflict(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    run = RunEvents(unit)
    found = [run.start("manufacture"), run.log("manufacture", "original")]
    accept(client, line, found)
    changed = dataclasses.replace(found[1], message="rewritten")
    newer = run.log("manufacture", "new, but in a batch with a conflict")
    answer = refused(client, app, batch([found[0], changed, newer]), status=409,
                     auth=line.auth)
    assert "seq 1" in answer.json()["detail"]
    assert [row["message"] for row in event_rows(app)] == ["", "original"]


def test_the_device_spool_and_the_server_agree(client: TestClient, app: FastAPI,
                                               line: LineLogin, unit: str,
                                               tmp_path: Path) -> None:
    """The device's own recorder and flush, with a sender that posts through the API: every
    event arrives once, in batches of the spool's size, and a second flush sends nothing."""
    recorder = EventRecorder(serial=unit, spool_dir=tmp_path / "log")
    with recorder.stage("manufacture"):
        for index in range(5):
            recorder.log("manufacture", level=Level.INFO, message=f"step {index}")
    sent: list[int] = []

    def send(chunk: Sequence[Event]) -> None:
        answer = post_events(client, chunk, auth=line.auth)
        answer.raise_for_status()
        sent.append(answer.json()["accepted"])

    assert recorder.spool.flush(send, batch=3) == 7
    assert sent == [3, 3, 1]
    assert EventSpool(tmp_path / "log", recorder.run_id).flush(send) == 0
    assert len(event_rows(app)) == 7
    assert table_rows(app, "units")[0]["status"] == "succeeded"


# --- refused batches -----------------------------------------------------------------------

def test_events_out_of_order_within_a_batch_are_refused(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    run = RunEvents(unit)
    first, second = run.start("manufacture"), run.log("manufacture", "x")
    answer = refused(client, app, batch([second, first]), status=422, auth=line.auth)
    assert "out of order" in answer.json()["detail"]
    refused(client, app, batch([first, first]), status=422, auth=line.auth)


def test_a_batch_mixing_runs_or_units_is_refused(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    report_unit(client, line, "SN-EV-2")
    one, other, other_unit = RunEvents(unit), RunEvents(unit), RunEvents("SN-EV-2")
    other.next_seq = other_unit.next_seq = 1
    refused(client, app, batch([one.start("manufacture"), other.log("manufacture", "x")]),
            status=422, auth=line.auth)
    refused(client, app, batch([one.start("manufacture"), other_unit.log("manufacture", "x")]),
            status=422, auth=line.auth)


def test_too_many_events_or_too_many_bytes_is_413(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    run = RunEvents(unit)
    refused(client, app, batch([run.log("manufacture", "x") for _ in range(101)]), status=413,
            auth=line.auth)
    big = RunEvents(unit)
    refused(client, app, batch([big.log("manufacture", "x" * 600_000) for _ in range(2)]),
            status=413, auth=line.auth)


def test_a_large_body_without_content_length_is_413(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    run = RunEvents(unit)
    text = json.dumps(batch([run.log("manufacture", "x" * 600_000) for _ in range(2)]))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(text), 65536):
            yield text[start:start + 65536].encode()

    before = event_rows(app)
    answer = client.post("/api/v1/events", content=chunks(), auth=line.auth,
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert event_rows(app) == before


def test_malformed_events_are_422_listing_every_problem_with_its_index(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    run = RunEvents(unit)
    good = run.start("manufacture").to_json()
    no_seq = {key: value for key, value in run.log("manufacture", "x").to_json().items()
              if key != "seq"}
    bad_type = run.log("manufacture", "y").to_json() | {"type": "shout"}
    finish_without_result = run.start("manufacture/x").to_json() | {"type": "finish"}
    answer = refused(client, app, {"events": [good, no_seq, bad_type, "text",
                                              finish_without_result]},
                     status=422, auth=line.auth)
    problems = answer.json()["problems"]
    assert "events[1]: missing key 'seq'" in problems
    assert any(problem.startswith("events[2]: type:") for problem in problems)
    assert "events[3]: an event must be a JSON object" in problems
    assert "events[4]: a finish event needs a result" in problems
    assert not any(problem.startswith("events[0]") for problem in problems)


@pytest.mark.parametrize("body", [[], {"events": []}, {"events": {}}, {"other": 1},
                                  {"events": [], "more": 1}])
def test_a_body_that_is_not_a_batch_is_422(client: TestClient, app: FastAPI, line: LineLogin,
                                           body: Any) -> None:
    refused(client, app, body, status=422, auth=line.auth)


def test_a_body_that_is_not_json_is_400(client: TestClient, app: FastAPI,
                                        line: LineLogin) -> None:
    answer = client.post("/api/v1/events", content=b"{not json", auth=line.auth)
    assert answer.status_code == 400
    assert "not JSON" in answer.json()["detail"]


@pytest.mark.parametrize("change", [{"run_id": "r" * 65}, {"name": "n" * 256},
                                    {"seq": 2**63}, {"timestamp_ns": 2**64},
                                    {"message": "nul \x00 inside"}, {"serial": "S\x00"}])
def test_values_the_database_cannot_hold_are_422_not_500(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str,
        change: dict[str, Any]) -> None:
    document = RunEvents(unit).log("manufacture", "x").to_json() | change
    answer = refused(client, app, {"events": [document]}, status=422, auth=line.auth)
    (field,) = change
    assert any(text.startswith(f"events[0]: {field}") for text in answer.json()["problems"])


def test_an_unknown_unit_is_404(client: TestClient, app: FastAPI, line: LineLogin) -> None:
    answer = refused(client, app, batch([RunEvents("SN-NOBODY").start("manufacture")]),
                     status=404, auth=line.auth)
    assert "SN-NOBODY" in answer.json()["detail"]


def test_a_run_id_of_another_unit_is_a_conflict(client: TestClient, app: FastAPI,
                                                line: LineLogin, unit: str) -> None:
    report_unit(client, line, "SN-EV-2")
    run = RunEvents(unit)
    accept(client, line, [run.start("manufacture")])
    thief = RunEvents("SN-EV-2", run_id=run.run_id, next_seq=5)
    refused(client, app, batch([thief.start("manufacture")]), status=409, auth=line.auth)


# --- who may send ---------------------------------------------------------------------------

def test_senders_without_the_right_key_are_refused(
        client: TestClient, app: FastAPI, line: LineLogin, admin: OperatorLogin,
        unit: str) -> None:
    body = batch([RunEvents(unit).start("manufacture")])
    refused(client, app, body, status=401)
    refused(client, app, body, status=401, auth=(line.profile, "wrong-key"))
    refused(client, app, body, status=401, auth=("no-such-profile", line.key))
    refused(client, app, body, status=401, headers={"Authorization": "Basic !!!"})
    refused(client, app, body, status=401, auth=("line1\x00", line.key))
    refused(client, app, body, status=401, headers={"Authorization": "Bearer kilndev_nope"})
    # an operator token is not a line key
    refused(client, app, body, status=401, headers=admin.headers)

    other = client.put("/api/v1/profiles/line2", headers=admin.headers,
                       json={"manufdata": example_manufdata()})
    assert other.status_code == 201, other.text
    refused(client, app, body, status=401, auth=("line2", line.key))
    answer = refused(client, app, body, status=403, auth=("line2", other.json()["line_key"]))
    assert "line2" in answer.json()["detail"]


def test_a_device_token_speaks_for_its_own_unit_only(
        client: TestClient, app: FastAPI, line: LineLogin, unit: str) -> None:
    run = start_manufacture(client, line, unit)
    report_unit(client, line, "SN-EV-2")
    handed = client.post("/mfg/line1/credentials", auth=line.auth, json={"serial": unit})
    assert handed.status_code == 200, handed.text
    token = {"Authorization": f"Bearer {handed.json()['device_token']}"}

    answer = post_events(client, [run.log("manufacture", "from the unit itself")],
                         headers=token)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 1, "duplicates": 0}

    refused(client, app, batch([RunEvents("SN-EV-2").start("manufacture")]), status=403,
            headers=token)


# --- what the events do to the records -------------------------------------------------------

def test_a_manufacture_run_moves_the_unit_from_started_to_succeeded_with_a_qa_report(
        client: TestClient, line: LineLogin, admin: OperatorLogin, unit: str) -> None:
    run = RunEvents(unit)
    found = run.whole("manufacture")
    accept(client, line, found[:1])
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"]) == ("manufacture", "started")
    assert record["manufactured_ns"] is None
    assert client.get(f"/api/v1/units/{unit}/qa-report",
                      headers=admin.headers).status_code == 404

    accept(client, line, found[1:])
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"], record["failure"]) == (
        "manufacture", "succeeded", None)
    assert record["manufactured_ns"] is not None
    assert [r["status"] for r in record["runs"]] == ["succeeded"]
    report = client.get(f"/api/v1/units/{unit}/qa-report", headers=admin.headers)
    assert report.status_code == 200, report.text
    document = report.json()
    assert (document["serial"], document["run_id"], document["result"]) == (
        unit, run.run_id, "pass")
    assert [stage["name"] for stage in document["stages"]] == [
        "manufacture", "manufacture/validate", "manufacture/write"]
    assert document["events"] == len(found)


def test_a_failed_manufacture_records_its_first_failing_stage(
        client: TestClient, line: LineLogin, admin: OperatorLogin, unit: str) -> None:
    run = RunEvents(unit)
    accept(client, line, [
        run.start("manufacture"), run.start("manufacture/disks"),
        run.start("manufacture/disks/partition"),
        run.finish("manufacture/disks/partition", Result.FAIL, "sfdisk exited 1"),
        run.finish("manufacture/disks", Result.FAIL, "partitioning failed"),
        run.finish("manufacture", Result.FAIL, "manufacture failed")])
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"]) == ("manufacture", "failed")
    assert record["failure"] == "manufacture/disks/partition: sfdisk exited 1"
    assert record["manufactured_ns"] is None
    assert client.get(f"/api/v1/units/{unit}/qa-report",
                      headers=admin.headers).status_code == 404


def test_a_warning_finish_still_succeeds_and_the_qa_report_lists_the_warning(
        client: TestClient, line: LineLogin, admin: OperatorLogin, unit: str) -> None:
    run = RunEvents(unit)
    accept(client, line, [run.start("manufacture"), run.start("manufacture/burn-in"),
                          run.finish("manufacture/burn-in", Result.WARN, "fan slow"),
                          run.finish("manufacture", Result.WARN)])
    assert unit_record(client, admin, unit)["status"] == "succeeded"
    report = client.get(f"/api/v1/units/{unit}/qa-report", headers=admin.headers).json()
    assert [warning["name"] for warning in report["warnings"]] == [
        "manufacture", "manufacture/burn-in"]


def test_restore_and_erase_runs_move_the_lifecycle(
        client: TestClient, line: LineLogin, admin: OperatorLogin, unit: str) -> None:
    accept(client, line, RunEvents(unit).whole("manufacture"))
    restore = RunEvents(unit)
    accept(client, line, [restore.start("restore")])
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"]) == ("restore", "started")
    accept(client, line, [restore.finish("restore")])
    assert unit_record(client, admin, unit)["status"] == "succeeded"

    erase = RunEvents(unit)
    accept(client, line, erase.whole("erase", failing_stage="canaries"))
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"], record["failure"]) == (
        "erase", "failed", "erase/canaries: disk too small")
    assert len(record["runs"]) == 3
    assert len(record["qa_reports"]) == 1  # restore and erase write none


def test_an_older_runs_late_finish_does_not_overwrite_a_newer_run(
        client: TestClient, line: LineLogin, admin: OperatorLogin, unit: str) -> None:
    old, new = RunEvents(unit), RunEvents(unit)
    accept(client, line, [old.start("restore")])
    accept(client, line, [new.start("erase")])
    accept(client, line, [old.finish("restore", Result.FAIL, "late")])
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"], record["failure"]) == (
        "erase", "started", None)
    assert {run["run_id"]: run["status"] for run in record["runs"]} == {
        old.run_id: "failed", new.run_id: "started"}


def test_an_older_run_flushed_late_does_not_overwrite_a_newer_run(
        client: TestClient, line: LineLogin, admin: OperatorLogin, unit: str) -> None:
    """The device flushes spools of earlier runs after the current one's first events (a
    restore ran offline): the run that started later on the unit's clock stays current."""
    old = RunEvents(unit)
    old_events = old.whole("restore", failing_stage="write-image")
    new = RunEvents(unit)
    accept(client, line, [new.start("erase")])
    accept(client, line, old_events)
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"]) == ("erase", "started")


def test_a_manufacture_success_flushed_after_the_next_boot_still_gets_its_qa_report(
        client: TestClient, line: LineLogin, admin: OperatorLogin, unit: str) -> None:
    """The unit rebooted before its last events went out; the restore boot's first event
    arrives before the spooled manufacture finish."""
    manufacture = RunEvents(unit)
    found = manufacture.whole("manufacture")
    accept(client, line, found[:-1])
    restore = RunEvents(unit)
    accept(client, line, [restore.start("restore")])
    accept(client, line, found[-1:])
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"]) == ("restore", "started")
    assert record["manufactured_ns"] is not None
    report = client.get(f"/api/v1/units/{unit}/qa-report", headers=admin.headers)
    assert report.status_code == 200, report.text
    assert report.json()["run_id"] == manufacture.run_id


def test_events_without_a_lifecycle_stage_are_stored_and_change_no_state(
        client: TestClient, app: FastAPI, line: LineLogin, admin: OperatorLogin,
        unit: str) -> None:
    run = RunEvents(unit)
    accept(client, line, [run.log("boot", "kernel 6.1"), run.progress("boot", done=1, total=2)])
    record = unit_record(client, admin, unit)
    assert (record["lifecycle"], record["status"]) == (None, None)
    assert len(event_rows(app)) == 2


# --- erase certificates ----------------------------------------------------------------------

def test_an_erase_certificate_is_stored_once(client: TestClient, app: FastAPI,
                                             line: LineLogin, admin: OperatorLogin,
                                             unit: str) -> None:
    document = {"run_id": "erase-run-1", "method": "nvme-format-ses1", "verified": True}
    url = f"/api/v1/units/{unit}/erase-certificates"
    first = client.post(url, auth=line.auth, json=document)
    assert first.status_code == 201, first.text
    assert first.json()["stored"] is True
    again = client.post(url, auth=line.auth, json=document)
    assert (again.status_code, again.json()["stored"]) == (200, False)
    changed = client.post(url, auth=line.auth, json=document | {"verified": False})
    assert changed.status_code == 409, changed.text
    listed = client.get(url, headers=admin.headers).json()["certificates"]
    assert [certificate["document"] for certificate in listed] == [document]
    assert unit_record(client, admin, unit)["erase_certificates"][0]["run_id"] == "erase-run-1"
    assert [row["action"] for row in table_rows(app, "audit")].count("erase.certificate") == 1


@pytest.mark.parametrize("document", [{}, {"run_id": ""}, {"run_id": 5}, [1],
                                      {"run_id": "r" * 65}, {"run_id": "a\x00b"}])
def test_a_malformed_erase_certificate_is_422(client: TestClient, app: FastAPI,
                                              line: LineLogin, unit: str,
                                              document: Any) -> None:
    answer = client.post(f"/api/v1/units/{unit}/erase-certificates", auth=line.auth,
                         json=document)
    assert answer.status_code == 422, answer.text
    assert table_rows(app, "erase_certificates") == []


def test_an_erase_certificate_needs_the_units_line_or_token(
        client: TestClient, app: FastAPI, line: LineLogin, admin: OperatorLogin,
        unit: str) -> None:
    url = f"/api/v1/units/{unit}/erase-certificates"
    document = {"run_id": "erase-run-1"}
    assert client.post(url, json=document).status_code == 401
    assert client.post(url, json=document, auth=(line.profile, "wrong")).status_code == 401
    for nobody in ("SN-NOBODY", "SN%00"):
        assert client.post(f"/api/v1/units/{nobody}/erase-certificates", auth=line.auth,
                           json=document).status_code == 404
    other = client.put("/api/v1/profiles/line2", headers=admin.headers,
                       json={"manufdata": example_manufdata()}).json()["line_key"]
    assert client.post(url, json=document, auth=("line2", other)).status_code == 403
    assert table_rows(app, "erase_certificates") == []
