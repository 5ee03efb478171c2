"""DDI fixtures: a fleet on the test server (SQLite and PostgreSQL, through `client`), with a
software module made by hand, one artifact, and registered targets with their tokens."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.context import AppContext
from tests.server.conftest import OperatorLogin

TENANT = "default"
ARTIFACT = bytes(range(256)) * 40 + b"the end"  # 10,247 bytes


@dataclass(frozen=True)
class Device:
    controller_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"TargetToken {self.token}"}

    @property
    def root(self) -> str:
        return f"/{TENANT}/controller/v1/{self.controller_id}"


@dataclass(frozen=True)
class Fleet:
    client: TestClient
    admin: OperatorLogin
    module_id: int
    devices: tuple[Device, ...]
    context: AppContext

    @property
    def api(self) -> str:
        return f"/api/v1/tenants/{TENANT}"

    def assign(self, device: Device, *, module_id: int | None = None, kind: str = "forced",
               **extra: object) -> int:
        answer = self.client.post(f"{self.api}/targets/{device.controller_id}/actions",
                                  headers=self.admin.headers,
                                  json={"module_id": module_id or self.module_id,
                                        "kind": kind, **extra})
        assert answer.status_code == 201, answer.text
        action_id: int = answer.json()["id"]
        return action_id

    def action(self, action_id: int) -> dict[str, Any]:
        answer = self.client.get(f"{self.api}/actions/{action_id}", headers=self.admin.headers)
        assert answer.status_code == 200, answer.text
        document: dict[str, Any] = answer.json()
        return document

    def target(self, device: Device) -> dict[str, Any]:
        answer = self.client.get(f"{self.api}/targets/{device.controller_id}",
                                 headers=self.admin.headers)
        assert answer.status_code == 200, answer.text
        document: dict[str, Any] = answer.json()
        return document

    def poll(self, device: Device, **headers: str) -> httpx.Response:
        answer: httpx.Response = self.client.get(device.root,
                                                 headers={**device.headers, **headers})
        return answer

    def feedback(self, device: Device, action_id: int, execution: str,
                 finished: str = "none", *, details: tuple[str, ...] = (),
                 path: str = "deploymentBase") -> httpx.Response:
        answer: httpx.Response = self.client.post(
            f"{device.root}/{path}/{action_id}/feedback", headers=device.headers,
            json={"id": str(action_id), "time": "20261123T000000",
                  "status": {"execution": execution, "result": {"finished": finished},
                             "details": list(details)}})
        return answer


def make_module(client: TestClient, admin: OperatorLogin, *, name: str = "firmware",
                version: str = "1.0", data: bytes = ARTIFACT,
                filename: str = "firmware.swu") -> int:
    answer = client.post(f"/api/v1/tenants/{TENANT}/softwaremodules", headers=admin.headers,
                         json={"name": name, "version": version, "kind": "os"})
    assert answer.status_code == 201, answer.text
    module_id: int = answer.json()["id"]
    answer = client.put(f"/api/v1/tenants/{TENANT}/softwaremodules/{module_id}/artifacts/"
                        f"{filename}", headers={**admin.headers,
                                                "Content-Type": "application/octet-stream"},
                        content=data)
    assert answer.status_code == 201, answer.text
    assert answer.json()["artifacts"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    return module_id


def add_devices(client: TestClient, admin: OperatorLogin, *names: str) -> tuple[Device, ...]:
    answer = client.post(f"/api/v1/tenants/{TENANT}/targets", headers=admin.headers,
                         json={"targets": [{"controller_id": name} for name in names]})
    assert answer.status_code == 201, answer.text
    return tuple(Device(made["controller_id"], made["target_token"])
                 for made in answer.json()["targets"])


@pytest.fixture
def fleet(app: FastAPI, client: TestClient, admin: OperatorLogin) -> Fleet:
    return Fleet(client=client, admin=admin, module_id=make_module(client, admin),
                 devices=add_devices(client, admin, "dev-1", "dev-2"),
                 context=app.state.context)
