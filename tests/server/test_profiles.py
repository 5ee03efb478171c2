"""Operators manage manufData profiles: validated against the appliance's own model, a line
key shown once, revisions, key rotation, and names that cannot reach outside."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.auth import Scope
from server.crypto import digest
from tests.server.conftest import (
    EXAMPLE_MANUFDATA,
    LineLogin,
    OperatorLogin,
    example_manufdata,
    make_operator,
)
from tests.server.helpers import table_rows


def put(client: TestClient, who: OperatorLogin, name: str, **body: Any) -> Any:
    return client.put(f"/api/v1/profiles/{name}", headers=who.headers,
                      json={"manufdata": example_manufdata()} | body)


def test_malformed_manufdata_is_422_listing_every_problem(
        client: TestClient, app: FastAPI, admin: OperatorLogin) -> None:
    document = copy.deepcopy(example_manufdata())
    document["product"] = "not a product!"
    document["files"] = []
    del document["layout"]
    document["variants"][0]["cpu"]["min_cores"] = "four"  # type: ignore[index]
    answer = put(client, admin, "line1", manufdata=document)
    assert answer.status_code == 422, answer.text
    problems = answer.json()["problems"]
    assert len(problems) >= 4, problems
    for where in ("product", "files", "layout", "variants[0].cpu.min_cores"):
        assert any(where in problem for problem in problems), (where, problems)
    assert table_rows(app, "profiles") == []


def test_cross_field_problems_are_listed_too(client: TestClient,
                                             admin: OperatorLogin) -> None:
    document = copy.deepcopy(example_manufdata())
    files: list[dict[str, Any]] = document["files"]  # type: ignore[assignment]
    document["files"] = [file for file in files if file.get("kind") != "image"]
    document["hooks"][0]["variants"] = ["no-such-variant"]  # type: ignore[index]
    answer = put(client, admin, "line1", manufdata=document)
    assert answer.status_code == 422
    problems = answer.json()["problems"]
    assert any("image" in problem for problem in problems), problems
    assert any("no-such-variant" in problem for problem in problems), problems


def test_the_server_section_is_the_servers(client: TestClient, admin: OperatorLogin) -> None:
    document = example_manufdata() | {"server": {"events_url": "http://evil/events",
                                                 "units_url": "x", "credentials_url": "x"}}
    created = put(client, admin, "line1", manufdata=document)
    assert created.status_code == 201, created.text
    assert "server" not in created.json()["manufdata"]
    served = client.get("/mfg/line1/manufData.json",
                        auth=("line1", created.json()["line_key"])).json()
    assert served["server"]["events_url"] == "http://kiln.test/api/v1/events"
    # even a `server` section that would not validate is dropped, not refused
    broken = example_manufdata() | {"server": {"events_url": 5}}
    assert put(client, admin, "line1", manufdata=broken).status_code == 200


def test_the_line_key_is_shown_once(client: TestClient, app: FastAPI,
                                    admin: OperatorLogin, reader: OperatorLogin) -> None:
    created = put(client, admin, "line1", kernel_file="vmlinuz", initrd_file="initrd.zst")
    assert created.status_code == 201
    body = created.json()
    key = body["line_key"]
    assert (body["name"], body["revision"], body["mfg_path"]) == (
        "line1", 1, "/mfg/line1/manufData.json")
    for answer in (client.get("/api/v1/profiles/line1", headers=reader.headers),
                   client.get("/api/v1/profiles", headers=reader.headers),
                   put(client, admin, "line1")):
        assert answer.status_code == 200, answer.text
        assert key not in answer.text
        assert "line_key" not in answer.text
    (row,) = table_rows(app, "profiles")
    assert row["key_hash"] == digest(key)
    assert key not in str(row)


def test_every_put_is_a_new_revision(client: TestClient, admin: OperatorLogin,
                                     reader: OperatorLogin) -> None:
    assert put(client, admin, "line1").json()["revision"] == 1
    second = put(client, admin, "line1", kernel_file="vmlinuz", kernel_args="quiet")
    assert (second.status_code, second.json()["revision"]) == (200, 2)
    third = put(client, admin, "line1", manufdata=example_manufdata() | {"product": "other"})
    assert third.json()["revision"] == 3
    shown = client.get("/api/v1/profiles/line1", headers=reader.headers).json()
    assert (shown["revision"], shown["manufdata"]["product"], shown["kernel_file"],
            shown["kernel_args"]) == (3, "other", None, "console=tty0 console=ttyS0,115200")
    listed = client.get("/api/v1/profiles", headers=reader.headers).json()["profiles"]
    assert [profile["name"] for profile in listed] == ["line1"]


def test_rotating_the_line_key(client: TestClient, line: LineLogin, admin: OperatorLogin,
                               reader: OperatorLogin) -> None:
    url = "/mfg/line1/manufData.json"
    assert client.post("/api/v1/profiles/line1/line-key",
                       headers=reader.headers).status_code == 403
    rotated = client.post("/api/v1/profiles/line1/line-key", headers=admin.headers)
    assert rotated.status_code == 200
    new_key = rotated.json()["line_key"]
    assert new_key != line.key
    assert client.get(url, auth=line.auth).status_code == 401
    assert client.get(url, auth=("line1", new_key)).status_code == 200
    assert client.post("/api/v1/profiles/nope/line-key",
                       headers=admin.headers).status_code == 404


@pytest.mark.parametrize("name", ["../x", "a/b", "Upper", "-dash", "x" * 65, "a%00b",
                                  "..%2Fx", "%2E%2E"])
def test_profile_names_that_could_escape_are_refused(client: TestClient, app: FastAPI,
                                                     admin: OperatorLogin, name: str) -> None:
    answer = put(client, admin, name)
    assert 400 <= answer.status_code < 500, answer.text
    assert table_rows(app, "profiles") == []


@pytest.mark.parametrize("body", [
    {"kernel_file": "../vmlinuz"}, {"initrd_file": "a/b"}, {"kernel_args": "a\nb"},
    {"kernel_args": "x" * 513}, {"unknown": True}, {"manufdata": "text"}])
def test_bad_profile_fields_are_422(client: TestClient, app: FastAPI, admin: OperatorLogin,
                                    body: dict[str, Any]) -> None:
    assert put(client, admin, "line1", **body).status_code == 422
    assert table_rows(app, "profiles") == []


def test_writing_profiles_needs_the_manufdata_write_scope(
        client: TestClient, app: FastAPI, reader: OperatorLogin) -> None:
    assert put(client, reader, "line1").status_code == 403
    assert client.put("/api/v1/profiles/line1",
                      json={"manufdata": example_manufdata()}).status_code == 401
    writer = make_operator(app, "writer", Scope.MANUFDATA_WRITE)
    assert put(client, writer, "line1").status_code == 201
    assert client.get("/api/v1/profiles/line1", headers=writer.headers).status_code == 403
    assert client.get("/api/v1/profiles/nope", headers=reader.headers).status_code == 404
    (entry,) = table_rows(app, "audit")
    assert entry["action"] == "profile.put"
    assert entry["actor"].startswith("user:writer (token ")


def test_the_published_schema_accepts_the_example(client: TestClient) -> None:
    answer = client.get("/api/v1/manufdata.schema.json")
    assert answer.status_code == 200
    schema = answer.json()
    jsonschema.validate(json.loads(EXAMPLE_MANUFDATA.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example_manufdata() | {"schema": 2}, schema)
