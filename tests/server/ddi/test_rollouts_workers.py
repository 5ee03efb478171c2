"""Rollouts on PostgreSQL behind several server workers: devices' feedback and operators'
steps arrive at once through different worker processes, and still every wave starts exactly
once and no device gets two actions from one rollout."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server.conftest import _empty_postgres
from tests.server.live import LiveServer

pytestmark = [pytest.mark.postgres, pytest.mark.allow_commands("python")]
TENANT = "default"
WORKERS = 3


@dataclass(frozen=True)
class Api:
    server: LiveServer
    token: str

    def call(self, method: str, path: str, *, expect: int | None = 200, **options: Any) -> Any:
        answer = requests.request(method, f"{self.server.url}/api/v1/tenants/{TENANT}{path}",
                                  headers={"Authorization": f"Bearer {self.token}",
                                           **options.pop("headers", {})}, timeout=60,
                                  **options)
        if expect is not None:
            assert answer.status_code == expect, f"{method} {path}: {answer.text}"
        return answer


@pytest.fixture
def api(tmp_path: Path, postgres_database: str) -> Iterator[Api]:
    _empty_postgres(postgres_database)
    with LiveServer.start(data_dir=tmp_path / "server", database_url=postgres_database,
                          extra_args=("--workers", str(WORKERS))) as server:
        _password, token = server.admin()
        yield Api(server=server, token=token)


def fleet(api: Api, count: int, prefix: str) -> dict[str, str]:
    made = api.call("POST", "/targets", expect=201, json={"targets": [
        {"controller_id": f"{prefix}-{n:03d}"} for n in range(count)]}).json()["targets"]
    return {target["controller_id"]: target["target_token"] for target in made}


def module(api: Api) -> int:
    made = api.call("POST", "/softwaremodules", expect=201,
                    json={"name": "fw", "version": "2.0"}).json()
    api.call("PUT", f"/softwaremodules/{made['id']}/artifacts/fw.swu", expect=201,
             data=b"firmware", headers={"Content-Type": "application/octet-stream"})
    module_id: int = made["id"]
    return module_id


def rollout_actions(api: Api, devices: dict[str, str], rollout_id: int) -> Counter[str]:
    """How many actions of this rollout each device has."""
    found: Counter[str] = Counter()
    for name in devices:
        for action in api.call("GET", f"/targets/{name}").json()["actions"]:
            if action["rollout_id"] == rollout_id:
                found[name] += 1
    return found


def test_concurrent_feedback_through_several_workers_starts_the_next_wave_once(
        api: Api) -> None:
    devices = fleet(api, 24, "w")
    made = api.call("POST", "/rollouts", expect=201, json={
        "name": "race", "module_id": module(api), "waves": [{"count": 12}, {"percent": 100}],
    }).json()
    api.call("POST", f"/rollouts/{made['id']}/start")
    first_wave = sorted(devices)[:12]
    actions = {name: api.call("GET", f"/targets/{name}").json()["actions"][0]["id"]
               for name in first_wave}

    def succeed(name: str) -> int:
        answer = requests.post(
            f"{api.server.url}/{TENANT}/controller/v1/{name}/deploymentBase/"
            f"{actions[name]}/feedback", timeout=60,
            headers={"Authorization": f"TargetToken {devices[name]}"},
            json={"status": {"execution": "closed", "result": {"finished": "success"}}})
        return answer.status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert list(pool.map(succeed, first_wave)) == [200] * 12
    shown = api.call("GET", f"/rollouts/{made['id']}").json()
    assert shown["current_wave"] == 2
    assert [wave["started_ns"] is not None for wave in shown["waves"]] == [True, True]
    assert rollout_actions(api, devices, made["id"]) == Counter(dict.fromkeys(devices, 1))


def test_concurrent_next_wave_steps_start_each_wave_once(api: Api) -> None:
    devices = fleet(api, 9, "n")
    made = api.call("POST", "/rollouts", expect=201, json={
        "name": "steps", "module_id": module(api),
        "waves": [{"count": 3}, {"count": 3}, {"percent": 100}]}).json()
    api.call("POST", f"/rollouts/{made['id']}/start")

    def next_wave(_: int) -> int:
        return int(api.call("POST", f"/rollouts/{made['id']}/next-wave",
                            expect=None).status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = Counter(pool.map(next_wave, range(8)))
    assert statuses == Counter({200: 2, 409: 6})
    shown = api.call("GET", f"/rollouts/{made['id']}").json()
    assert shown["current_wave"] == 3
    assert rollout_actions(api, devices, made["id"]) == Counter(dict.fromkeys(devices, 1))
