"""Credential escrow: a unit gets its admin password and a device token only while it is
being manufactured; the password is stored sealed, revealed only to operators holding
`credentials:reveal`, and every reveal is audited."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from kiln.events import Result
from server.auth import Scope
from server.crypto import ADMIN_PASSWORD_LENGTH, Escrow
from server.db.schema import credentials, units
from server.logs import JsonFormatter
from tests.server.conftest import LineLogin, OperatorLogin, example_manufdata, make_operator
from tests.server.helpers import (
    RunEvents,
    accept,
    database_text,
    post_events,
    report_unit,
    start_manufacture,
    table_rows,
)


def hand_out(client: TestClient, line: LineLogin, serial: str) -> Any:
    return client.post(f"/mfg/{line.profile}/credentials", auth=line.auth,
                       json={"serial": serial})


def reveal(client: TestClient, who: OperatorLogin, serial: str) -> Any:
    return client.post(f"/api/v1/units/{serial}/credentials/reveal", headers=who.headers)


@pytest.fixture
def revealer(app: FastAPI) -> OperatorLogin:
    return make_operator(app, "revealer", Scope.CREDENTIALS_REVEAL)


def test_credentials_only_while_the_manufacture_runs(client: TestClient, app: FastAPI,
                                                     line: LineLogin) -> None:
    report_unit(client, line, "SN-1")
    before = hand_out(client, line, "SN-1")
    assert before.status_code == 409
    assert "manufactur" in before.json()["detail"]
    run = RunEvents("SN-1")
    found = run.whole("manufacture")
    accept(client, line, found[:1])
    during = hand_out(client, line, "SN-1")
    assert during.status_code == 200, during.text
    assert during.headers["cache-control"] == "no-store"
    accept(client, line, found[1:])
    assert hand_out(client, line, "SN-1").status_code == 409

    restore = RunEvents("SN-1")
    accept(client, line, [restore.start("restore")])
    assert hand_out(client, line, "SN-1").status_code == 409
    assert len(table_rows(app, "credentials")) == 1


def test_no_credentials_after_a_failed_manufacture(client: TestClient, line: LineLogin) -> None:
    report_unit(client, line, "SN-1")
    accept(client, line, RunEvents("SN-1").whole("manufacture", Result.FAIL,
                                                  failing_stage="partition"))
    assert hand_out(client, line, "SN-1").status_code == 409


def test_unknown_units_and_other_lines_get_nothing(client: TestClient, app: FastAPI,
                                                   line: LineLogin,
                                                   admin: OperatorLogin) -> None:
    assert hand_out(client, line, "SN-NONE").status_code == 404
    start_manufacture(client, line, "SN-1")
    other = client.put("/api/v1/profiles/line2", headers=admin.headers,
                       json={"manufdata": example_manufdata()}).json()["line_key"]
    assert hand_out(client, LineLogin("line2", other), "SN-1").status_code == 404
    assert client.post("/mfg/line1/credentials", json={"serial": "SN-1"}).status_code == 401
    assert client.post("/mfg/line1/credentials", auth=("line1", "x"),
                       json={"serial": "SN-1"}).status_code == 401
    assert client.post("/mfg/line1/credentials", auth=line.auth,
                       json={"serial": "a b"}).status_code == 422
    assert table_rows(app, "credentials") == []


def test_the_same_password_again_and_a_new_device_token_each_time(
        client: TestClient, line: LineLogin) -> None:
    run = start_manufacture(client, line, "SN-1")
    first, second = hand_out(client, line, "SN-1").json(), hand_out(client, line, "SN-1").json()
    assert first["serial"] == "SN-1"
    assert len(first["admin_password"]) == ADMIN_PASSWORD_LENGTH
    assert first["admin_password"] == second["admin_password"]
    assert first["device_token"] != second["device_token"]
    assert first["device_token"].startswith("kilndev_")

    old = {"Authorization": f"Bearer {first['device_token']}"}
    new = {"Authorization": f"Bearer {second['device_token']}"}
    assert post_events(client, [run.log("manufacture", "a")], headers=old).status_code == 401
    assert post_events(client, [run.log("manufacture", "b")], headers=new).status_code == 200


def test_no_secret_is_stored_or_logged_in_plaintext(client: TestClient, app: FastAPI,
                                                    line: LineLogin, revealer: OperatorLogin,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    start_manufacture(client, line, "SN-1")
    handed = hand_out(client, line, "SN-1").json()
    shown = reveal(client, revealer, "SN-1").json()
    assert shown["admin_password"] == handed["admin_password"]
    secrets = (handed["admin_password"], handed["device_token"],
               handed["device_token"].removeprefix("kilndev_"), line.key, revealer.token,
               revealer.password)
    stored = database_text(app)
    assert stored, "the scan found no text at all"
    for secret in secrets:
        assert not any(secret in value for value in stored), secret
    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert "/credentials" in logged  # the requests were logged, without what they carried
    for secret in secrets:
        assert secret not in logged, secret


def test_revealing_needs_the_scope_and_is_audited_every_time(
        client: TestClient, app: FastAPI, line: LineLogin, reader: OperatorLogin,
        revealer: OperatorLogin) -> None:
    start_manufacture(client, line, "SN-1")
    password = hand_out(client, line, "SN-1").json()["admin_password"]
    assert reveal(client, reader, "SN-1").status_code == 403
    assert client.post("/api/v1/units/SN-1/credentials/reveal").status_code == 401
    assert _reveals(app) == []

    for _ in range(2):
        answer = reveal(client, revealer, "SN-1")
        assert answer.status_code == 200, answer.text
        assert answer.json()["admin_password"] == password
        assert answer.headers["cache-control"] == "no-store"
    entries = _reveals(app)
    assert len(entries) == 2
    assert {entry["target"] for entry in entries} == {"SN-1"}
    assert all(entry["actor"].startswith("user:revealer (token ") for entry in entries)
    metrics = client.get("/metrics").text
    assert "kiln_credential_reveals_total 2.0" in metrics


def _reveals(app: FastAPI) -> list[dict[str, Any]]:
    return [row for row in table_rows(app, "audit") if row["action"] == "credential.reveal"]


def test_nothing_to_reveal(client: TestClient, line: LineLogin,
                           revealer: OperatorLogin) -> None:
    report_unit(client, line, "SN-1")
    assert reveal(client, revealer, "SN-1").status_code == 404
    assert reveal(client, revealer, "SN-NONE").status_code == 404


def test_a_sealed_credential_moved_to_another_unit_does_not_open(
        client: TestClient, app: FastAPI, line: LineLogin, revealer: OperatorLogin) -> None:
    """The seal is bound to the unit's serial: copying a row's ciphertext onto another unit
    gives that unit nothing, and the API says so (409) rather than failing with a 500."""
    start_manufacture(client, line, "SN-1")
    hand_out(client, line, "SN-1")
    start_manufacture(client, line, "SN-2")
    hand_out(client, line, "SN-2")
    engine = app.state.context.engine
    with engine.begin() as connection:
        ids = {row.serial: row.id
               for row in connection.execute(select(units.c.serial, units.c.id))}
        sealed = connection.execute(select(credentials.c.sealed).where(
            credentials.c.unit_id == ids["SN-1"])).scalar()
        connection.execute(update(credentials).where(credentials.c.unit_id == ids["SN-2"])
                           .values(sealed=sealed))
    answer = reveal(client, revealer, "SN-2")
    assert answer.status_code == 409, answer.text
    assert "does not open" in answer.json()["detail"]
    assert _reveals(app) == []
    handed = hand_out(client, line, "SN-2")
    assert handed.status_code == 409, handed.text
    assert reveal(client, revealer, "SN-1").status_code == 200


def test_a_credential_sealed_under_another_server_key_does_not_open(
        client: TestClient, app: FastAPI, line: LineLogin, revealer: OperatorLogin) -> None:
    start_manufacture(client, line, "SN-1")
    hand_out(client, line, "SN-1")
    foreign = Escrow(b"k" * 32).seal("password", context="default/SN-1")
    with app.state.context.engine.begin() as connection:
        connection.execute(update(credentials).values(sealed=foreign))
    answer = reveal(client, revealer, "SN-1")
    assert answer.status_code == 409, answer.text


def test_a_unit_is_a_ddi_target_from_its_credentials_on(client: TestClient, line: LineLogin,
                                                         admin: OperatorLogin) -> None:
    """Rollouts can take a unit before it polls; it polls DDI with its device token (a new
    token replaces the old one there too)."""
    start_manufacture(client, line, "SN-1")
    first = hand_out(client, line, "SN-1").json()["device_token"]
    target = client.get("/api/v1/tenants/default/targets/SN-1", headers=admin.headers)
    assert target.status_code == 200, target.text
    assert target.json()["kiln_unit"] is True
    assert target.json()["attributes"]["serial"] == "SN-1"
    poll = client.get("/default/controller/v1/SN-1",
                      headers={"Authorization": f"TargetToken {first}"})
    assert poll.status_code == 200
    second = hand_out(client, line, "SN-1").json()["device_token"]
    assert client.get("/default/controller/v1/SN-1", headers={
        "Authorization": f"TargetToken {first}"}).status_code == 401
    assert client.get("/default/controller/v1/SN-1", headers={
        "Authorization": f"TargetToken {second}"}).status_code == 200
