"""Liveness, Prometheus metrics and the published OpenAPI document."""

from __future__ import annotations

import dataclasses
import re

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from tests.server.conftest import LineLogin
from tests.server.helpers import RunEvents, accept, post_events, report_unit


def test_healthz(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "database": "ok"}


def test_healthz_says_when_the_database_is_gone(client: TestClient, app: FastAPI) -> None:
    context = app.state.context
    unreachable = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                                connect_args={"connect_timeout": 2})
    app.state.context = dataclasses.replace(context, engine=unreachable)
    try:
        answer = client.get("/healthz")
    finally:
        app.state.context = context
        unreachable.dispose()
    assert answer.status_code == 503
    assert answer.json()["status"] == "unhealthy"


def metric(text: str, name: str) -> float:
    """The value of the sample line `name` (with its labels, if any) in an exposition."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in the metrics"
    return float(match.group(1))


def test_metrics_count_events_duplicates_and_refusals(client: TestClient,
                                                      line: LineLogin) -> None:
    report_unit(client, line, "SN-1")
    run = RunEvents("SN-1")
    found = run.whole("manufacture")
    before = client.get("/metrics").text
    assert metric(before, "kiln_events_ingested_total") == 0
    accept(client, line, found)
    accept(client, line, found[:2])
    assert post_events(client, [RunEvents("SN-NONE").start("x")],
                       auth=line.auth).status_code == 404
    answer = client.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert metric(text, "kiln_events_ingested_total") == len(found)
    assert metric(text, "kiln_events_duplicate_total") == 2
    assert metric(text, 'kiln_event_batches_rejected_total{reason="404"}') == 1
    assert metric(text, 'kiln_http_request_seconds_count{method="POST",'
                        'route="/api/v1/events",status="200"}') == 2


def test_the_openapi_document_lists_the_routes(client: TestClient) -> None:
    answer = client.get("/api/openapi.json")
    assert answer.status_code == 200
    paths = answer.json()["paths"]
    for path, method in [
            ("/healthz", "get"), ("/metrics", "get"), ("/api/v1/events", "post"),
            ("/api/v1/units", "get"), ("/api/v1/units/{serial}", "get"),
            ("/api/v1/units/{serial}/events", "get"), ("/api/v1/units/{serial}/stream", "get"),
            ("/api/v1/units/{serial}/qa-report", "get"),
            ("/api/v1/units/{serial}/erase-certificates", "post"),
            ("/api/v1/units/{serial}/credentials/reveal", "post"),
            ("/api/v1/stats/today", "get"), ("/api/v1/audit", "get"),
            ("/api/v1/profiles/{name}", "put"), ("/api/v1/profiles/{name}/line-key", "post"),
            ("/api/v1/manufdata.schema.json", "get"), ("/api/v1/whoami", "get"),
            ("/api/v1/tokens", "post"), ("/api/v1/tokens/{token_id}", "delete"),
            ("/api/v1/users", "post"), ("/mfg/{profile}/manufData.json", "get"),
            ("/mfg/{profile}/boot.ipxe", "get"), ("/mfg/{profile}/units", "post"),
            ("/mfg/{profile}/credentials", "post")]:
        assert method in paths.get(path, {}), (path, method)
    events = paths["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert events["schema"]["properties"]["events"]["maxItems"] == 100
    assert client.get("/api/docs").status_code == 200


def test_the_api_docs_page_works_offline(client: TestClient) -> None:
    """A factory LAN has no internet: Swagger UI comes from this server, not a CDN."""
    page = client.get("/api/docs").text
    assert "cdn." not in page
    assert "/api/docs/assets/swagger-ui-bundle.js" in page
    script = client.get("/api/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert len(script.content) > 100_000
