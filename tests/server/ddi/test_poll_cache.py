"""Where root polls are answered from: a worker's cache in front of the application (no
database), kept right by the change feed when another worker changes a controller; and
last-seen times written in batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from server.app import create_app
from server.config import ServerConfig
from tests.server.conftest import OperatorLogin
from tests.server.ddi.conftest import Fleet


def polls_counted(fleet: Fleet, answer: str) -> float:
    value = fleet.context.metrics.registry.get_sample_value("kiln_ddi_polls_total",
                                                            {"answer": answer})
    return value or 0.0


def test_a_cached_poll_never_reaches_the_database(fleet: Fleet, app: FastAPI) -> None:
    device = fleet.devices[0]
    first = fleet.poll(device)
    assert polls_counted(fleet, "database") == 1
    context = app.state.context
    app.state.context = dataclasses.replace(
        context, engine=create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none"))
    try:
        again = fleet.poll(device)
        assert (again.status_code, again.content) == (200, first.content)
        assert again.headers["etag"] == first.headers["etag"]
        assert fleet.poll(device, **{"If-None-Match": first.headers["etag"]}).status_code == 304
        assert polls_counted(fleet, "cache") == 2
        # a token the cached answer does not vouch for goes on to the application (which
        # needs the database: here, one that is not there)
        with pytest.raises(OperationalError):
            fleet.client.get(device.root, headers={"Authorization": "TargetToken x"})
    finally:
        app.state.context = context


@pytest.fixture
def second_worker(server_config: ServerConfig, app: FastAPI) -> Iterator[TestClient]:
    """Another worker process's application on the same database."""
    other = create_app(server_config)
    with TestClient(other, base_url="http://kiln.test") as client:
        yield client
    other.state.context.engine.dispose()


def test_the_change_feed_brings_another_workers_change_to_the_cache(
        fleet: Fleet, second_worker: TestClient, admin: OperatorLogin) -> None:
    device = fleet.devices[0]
    assert "deploymentBase" not in fleet.poll(device).json()["_links"]  # cached here
    answer = second_worker.post(f"{fleet.api}/targets/{device.controller_id}/actions",
                                headers=admin.headers, json={"module_id": fleet.module_id})
    assert answer.status_code == 201, answer.text
    assert "deploymentBase" not in fleet.poll(device).json()["_links"]  # stale until read
    assert fleet.context.ddi.feed.catch_up(fleet.context.engine) >= 1
    assert "deploymentBase" in fleet.poll(device).json()["_links"]


def test_gateway_token_changes_reach_the_cache_through_the_feed(
        fleet: Fleet, second_worker: TestClient, admin: OperatorLogin) -> None:
    made = fleet.client.post(f"{fleet.api}/ddi/gateway-token", headers=admin.headers).json()
    gateway = {"Authorization": f"GatewayToken {made['gateway_token']}"}
    device = fleet.devices[0]
    assert fleet.client.get(device.root, headers=gateway).status_code == 200
    second_worker.post(f"{fleet.api}/ddi/gateway-token", headers=admin.headers)
    fleet.context.ddi.feed.catch_up(fleet.context.engine)
    assert fleet.client.get(device.root, headers=gateway).status_code == 401
