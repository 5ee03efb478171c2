"""A real hawkBit client against a real `kiln server`: Debian's `swupdate` (suricatta) in dry
run (`-n`) on loopback, as shared/ddi-checklist.md's "real clients" describes: registration
and attributes (configData), a deployment downloaded and verified, success reported after a
"restart" (`-c 2`), a failure, and a cancel."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server.ddi.swupdate import (
    SigningIdentity,
    SwupdateClient,
    make_signing_identity,
    make_swu,
)
from tests.server.live import LiveServer

pytestmark = pytest.mark.allow_commands("python", "openssl", "swupdate", "swupdate-ipc")
TENANT = "default"
INSTALLED = "Update successful, executing post-update actions."


@dataclass(frozen=True)
class Fleet:
    server: LiveServer
    token: str
    identity: SigningIdentity
    work: Path

    @property
    def api(self) -> str:
        return f"{self.server.url}/api/v1/tenants/{TENANT}"

    def call(self, method: str, path: str, **options: Any) -> Any:
        answer = requests.request(method, self.api + path, timeout=30,
                                  headers={"Authorization": f"Bearer {self.token}",
                                           **options.pop("headers", {})}, **options)
        assert answer.ok, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def device(self, name: str) -> str:
        made = self.call("POST", "/targets", json={"targets": [{"controller_id": name}]})
        token: str = made["targets"][0]["target_token"]
        return token

    def module(self, *, version: str, hardware: str) -> int:
        swu = make_swu(directory=self.work / f"swu-{version}", version=version,
                       hardware=hardware, identity=self.identity)
        module_id: int = self.call("POST", "/softwaremodules", json={
            "name": "kiln-test-firmware", "version": version, "kind": "os"})["id"]
        self.call("PUT", f"/softwaremodules/{module_id}/artifacts/{swu.name}",
                  data=swu.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        return module_id

    def action(self, action_id: int) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", f"/actions/{action_id}")
        return found

    def client(self, name: str, token: str, **options: Any) -> SwupdateClient:
        return SwupdateClient(directory=self.work / f"client-{name}", server_url=self.server.url,
                              tenant=TENANT, controller_id=name, identity=self.identity,
                              target_token=token, **options)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("swupdate")
    with LiveServer.start(data_dir=work / "server") as server:
        _password, token = server.admin()
        found = Fleet(server=server, token=token, identity=make_signing_identity(work / "keys"),
                      work=work)
        found.call("PUT", "/ddi", json={"polling_seconds": 1})
        yield found


def test_swupdate_registers_reports_installs_and_confirms_after_restart(fleet: Fleet) -> None:
    token = fleet.device("swu-1")
    module_id = fleet.module(version="2.0.0", hardware="1.0")
    with fleet.client("swu-1", token, attributes={"variant": "qemu-lab",
                                                  "hwrev": "1.0"}) as client:
        client.start()
        client.wait_for("Server initialized, entering suricatta main loop.")
        client.wait_for(condition=lambda: fleet.call("GET", "/targets/swu-1")["attributes"]
                        == {"variant": "qemu-lab", "hwrev": "1.0"}, timeout=30)
        action_id = fleet.call("POST", "/targets/swu-1/actions",
                               json={"module_id": module_id})["id"]
        client.poll_now()
        client.wait_for(INSTALLED, timeout=60)
        client.wait_for(condition=lambda: any(
            "All Chunks Installed." in step["messages"]
            for step in fleet.action(action_id)["history"]), timeout=30)
        action = fleet.action(action_id)
        assert (action["state"], action["active"]) == ("running", True)  # until it restarts
        client.stop()
        client.start(confirm="2")  # "rebooted into the new image": closed + success
        client.wait_for(condition=lambda: fleet.action(action_id)["state"] == "finished",
                        timeout=30)
    target = fleet.call("GET", "/targets/swu-1")
    assert target["installed_module_id"] == module_id
    assert target["installed_action_id"] == action_id
    history = fleet.action(action_id)["history"]
    assert history[0]["state"] == "running"
    assert history[-1]["state"] == "finished"
    assert history[-1]["messages"][:1] == ["Update Installed."]
    assert fleet.action(action_id)["active"] is False


def test_an_image_for_other_hardware_fails_and_the_failure_is_recorded(fleet: Fleet) -> None:
    token = fleet.device("swu-2")
    module_id = fleet.module(version="2.0.1", hardware="9.9")  # the client says 1.0
    action_id = fleet.call("POST", "/targets/swu-2/actions", json={"module_id": module_id})["id"]
    with fleet.client("swu-2", token) as client:
        client.start()
        client.wait_for(condition=lambda: fleet.action(action_id)["state"] == "error",
                        timeout=60)
    action = fleet.action(action_id)
    assert action["active"] is False
    assert "No suitable .swu image found" in action["last_message"]
    assert fleet.call("GET", "/targets/swu-2")["installed_module_id"] is None


def test_a_cancel_reaches_swupdate_and_it_acknowledges(fleet: Fleet) -> None:
    token = fleet.device("swu-3")
    module_id = fleet.module(version="2.0.2", hardware="1.0")
    action_id = fleet.call("POST", "/targets/swu-3/actions", json={"module_id": module_id})["id"]
    fleet.call("POST", f"/actions/{action_id}/cancel", json={})
    with fleet.client("swu-3", token) as client:
        client.start()
        client.wait_for(condition=lambda: fleet.action(action_id)["state"] == "canceled",
                        timeout=60)
        assert INSTALLED not in client.log_text()
    history = fleet.action(action_id)["history"]
    assert [step["state"] for step in history] == ["running", "canceling", "canceled"]
    assert history[-1]["messages"][0] == "cancellation acknowledged."
