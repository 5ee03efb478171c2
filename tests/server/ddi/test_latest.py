"""Update mode `latest`: a target always gets the newest image compatible with its variant —
when it reports its variant, when it is switched to `latest`, and when a newer image is
uploaded; an image for another variant, or one already installed, is not assigned."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.image.signing import SigningKey
from tests.server.ddi.conftest import Fleet
from tests.server.signed_images import build_test_image

pytestmark = pytest.mark.allow_commands("tar")


def push(fleet: Fleet, path: Path) -> int:
    answer = fleet.client.post("/api/v1/images", content=path.read_bytes(), headers={
        **fleet.admin.headers, "Content-Type": "application/octet-stream"})
    assert answer.status_code == 201, answer.text
    modules = fleet.client.get(f"{fleet.api}/softwaremodules",
                               headers=fleet.admin.headers).json()["softwaremodules"]
    module_id: int = next(m["id"] for m in modules if m["image_id"] == answer.json()["id"])
    return module_id


def offered_module(fleet: Fleet, controller_id: str) -> int | None:
    actions = fleet.client.get(f"{fleet.api}/targets/{controller_id}",
                               headers=fleet.admin.headers).json()["actions"]
    open_ones = [a for a in actions if a["active"] and a["state"] != "canceling"]
    return open_ones[0]["module_id"] if open_ones else None


def test_a_latest_target_follows_the_newest_compatible_image(
        fleet: Fleet, tmp_path: Path, signing_key: SigningKey) -> None:
    device = fleet.devices[0]
    older = push(fleet, build_test_image(tmp_path, [signing_key], version="1.9.0")[0])
    answer = fleet.client.patch(f"{fleet.api}/targets/{device.controller_id}",
                                headers=fleet.admin.headers, json={"update_mode": "latest"})
    assert answer.status_code == 200
    assert offered_module(fleet, device.controller_id) is None  # no variant reported yet
    fleet.client.put(f"{device.root}/configData", headers=device.headers,
                     json={"data": {"variant": "qemu-lab"}})
    assert offered_module(fleet, device.controller_id) == older
    newer = push(fleet, build_test_image(tmp_path, [signing_key], version="1.10.0")[0])
    assert offered_module(fleet, device.controller_id) == newer  # 1.10 > 1.9
    cancel = fleet.poll(device).json()["_links"]["cancelAction"]["href"]  # 1.9.0's first
    assert fleet.feedback(device, int(cancel.rsplit("/", 1)[1]), "canceled",
                          path="cancelAction").status_code == 200
    assert "deploymentBase" in fleet.poll(device).json()["_links"]
    assert offered_module(fleet, fleet.devices[1].controller_id) is None  # mode rollout
    action_id = fleet.client.get(f"{fleet.api}/targets/{device.controller_id}",
                                 headers=fleet.admin.headers).json()["actions"][0]["id"]
    fleet.feedback(device, action_id, "closed", "success")
    fleet.client.put(f"{device.root}/configData", headers=device.headers,
                     json={"data": {"variant": "qemu-lab"}})
    assert offered_module(fleet, device.controller_id) is None  # installed: nothing new
