"""Rollouts through the API on both databases: waves by percentage and count, the success
threshold that starts the next wave, the error threshold that pauses or aborts, approval,
pause/resume/next-wave/cancel (cancel reaches devices through cancelAction), filters and
update modes, and each failed device's log."""

from __future__ import annotations

from typing import Any

import pytest

from server.ddi.rollouts import WaveSpec, wave_sizes
from tests.server.ddi.conftest import Device, Fleet, add_devices


def rollout(fleet: Fleet, **fields: Any) -> dict[str, Any]:
    body = {"name": "spring", "module_id": fleet.module_id, "waves": [{"percent": 100}],
            **fields}
    answer = fleet.client.post(f"{fleet.api}/rollouts", headers=fleet.admin.headers, json=body)
    assert answer.status_code == 201, answer.text
    document: dict[str, Any] = answer.json()
    return document


def step(fleet: Fleet, rollout_id: int, operation: str, status: int = 200) -> dict[str, Any]:
    answer = fleet.client.post(f"{fleet.api}/rollouts/{rollout_id}/{operation}",
                               headers=fleet.admin.headers)
    assert answer.status_code == status, answer.text
    document: dict[str, Any] = answer.json()
    return document


def shown(fleet: Fleet, rollout_id: int) -> dict[str, Any]:
    answer = fleet.client.get(f"{fleet.api}/rollouts/{rollout_id}", headers=fleet.admin.headers)
    document: dict[str, Any] = answer.json()
    return document


def offered(fleet: Fleet, device: Device) -> int | None:
    """The action id the device's root poll offers, if any."""
    href = fleet.poll(device).json()["_links"].get("deploymentBase", {}).get("href")
    return int(href.split("/deploymentBase/")[1].split("?")[0]) if href else None


def finish(fleet: Fleet, device: Device, result: str = "success") -> None:
    action_id = offered(fleet, device)
    assert action_id is not None, f"{device.controller_id} has nothing offered"
    answer = fleet.feedback(device, action_id, "closed", result, details=(f"it {result}",))
    assert answer.status_code == 200, answer.text


@pytest.fixture
def ten(fleet: Fleet) -> tuple[Device, ...]:
    """Ten devices in the order rollouts take them (by controller id)."""
    devices = fleet.devices + add_devices(fleet.client, fleet.admin,
                                          *[f"dev-{n:02d}" for n in range(3, 11)])
    return tuple(sorted(devices, key=lambda device: device.controller_id))


def test_wave_sizes_round_up_and_the_last_wave_takes_the_rest() -> None:
    assert wave_sizes(10, (WaveSpec(percent=20), WaveSpec(percent=30),
                           WaveSpec(percent=100))) == [2, 3, 5]
    assert wave_sizes(10, (WaveSpec(count=1), WaveSpec(percent=1))) == [1, 9]
    assert wave_sizes(3, (WaveSpec(percent=50), WaveSpec(percent=50),
                          WaveSpec(count=5))) == [2, 1]
    assert wave_sizes(1, (WaveSpec(percent=10), WaveSpec(percent=90))) == [1]


def test_waves_start_one_after_another_as_each_succeeds(fleet: Fleet,
                                                          ten: tuple[Device, ...]) -> None:
    made = rollout(fleet, waves=[{"count": 2}, {"percent": 30}, {"percent": 100}])
    assert [w["size"] for w in made["waves"]] == [2, 3, 5]
    assert made["state"] == "ready"
    assert all(offered(fleet, device) is None for device in ten)
    started = step(fleet, made["id"], "start")
    assert (started["state"], started["current_wave"]) == ("running", 1)
    first, second, third = ten[:2], ten[2:5], ten[5:]
    assert all(offered(fleet, device) for device in first)
    assert not any(offered(fleet, device) for device in second + third)
    finish(fleet, first[0])
    assert shown(fleet, made["id"])["current_wave"] == 1  # 100 % needed
    finish(fleet, first[1])
    now = shown(fleet, made["id"])
    assert now["current_wave"] == 2
    assert now["waves"][0]["finished"] == 2 and now["waves"][0]["finished_ns"]
    assert all(offered(fleet, device) for device in second)
    assert not any(offered(fleet, device) for device in third)
    for device in second + third:
        if offered(fleet, device) is None:
            assert shown(fleet, made["id"])["current_wave"] == 3
        finish(fleet, device)
    final = shown(fleet, made["id"])
    assert final["state"] == "finished"
    assert [w["finished"] for w in final["waves"]] == [2, 3, 5]


def test_the_error_threshold_pauses_and_resume_waits_for_an_operator(
        fleet: Fleet, ten: tuple[Device, ...]) -> None:
    made = rollout(fleet, waves=[{"count": 4}, {"percent": 100}], success_percent=50,
                   error_percent=50)
    step(fleet, made["id"], "start")
    finish(fleet, ten[0], "failure")
    assert shown(fleet, made["id"])["state"] == "running"
    finish(fleet, ten[1], "failure")
    paused = shown(fleet, made["id"])
    assert paused["state"] == "paused"
    assert paused["reason"] == "wave 1: 2 of 4 failed (error threshold 50%)"
    finish(fleet, ten[2])
    finish(fleet, ten[3])
    assert offered(fleet, ten[4]) is None  # a paused rollout starts no wave
    assert step(fleet, made["id"], "resume")["state"] == "paused"  # still over the threshold
    moved = step(fleet, made["id"], "next-wave")
    assert (moved["state"], moved["current_wave"]) == ("running", 2)
    assert all(offered(fleet, device) for device in ten[4:])
    failures = fleet.client.get(f"{fleet.api}/rollouts/{made['id']}/failures",
                                headers=fleet.admin.headers).json()["failures"]
    assert [f["controller_id"] for f in failures] == [d.controller_id for d in ten[:2]]
    assert all(f["last_message"] == "it failure" and "it failure" in f["messages"]
               for f in failures)


def test_abort_on_error_cancels_the_open_actions(fleet: Fleet, ten: tuple[Device, ...]) -> None:
    made = rollout(fleet, waves=[{"count": 3}, {"percent": 100}], error_percent=30,
                   on_error="abort")
    step(fleet, made["id"], "start")
    finish(fleet, ten[0], "failure")
    aborted = shown(fleet, made["id"])
    assert aborted["state"] == "aborted"
    for device in ten[1:3]:
        links = fleet.poll(device).json()["_links"]
        assert "cancelAction" in links and "deploymentBase" not in links
    assert step(fleet, made["id"], "resume", status=409)["detail"].endswith("(aborted)")


def test_cancel_reaches_every_open_device(fleet: Fleet, ten: tuple[Device, ...]) -> None:
    made = rollout(fleet, waves=[{"count": 2}, {"percent": 100}])
    step(fleet, made["id"], "start")
    canceled = step(fleet, made["id"], "cancel")
    assert canceled["state"] == "canceled"
    for device in ten[:2]:
        href = fleet.poll(device).json()["_links"]["cancelAction"]["href"]
        action_id = int(href.rsplit("/", 1)[1])
        assert fleet.feedback(device, action_id, "canceled",
                              path="cancelAction").status_code == 200
        assert fleet.action(action_id)["state"] == "canceled"
    assert all(offered(fleet, device) is None for device in ten)


def test_approval_comes_before_the_start(fleet: Fleet, ten: tuple[Device, ...]) -> None:
    made = rollout(fleet, approval_required=True)
    assert made["state"] == "waiting_approval"
    assert "needs ready" in step(fleet, made["id"], "start", status=409)["detail"]
    assert step(fleet, made["id"], "approve")["approved_by"].startswith("user:admin")
    assert step(fleet, made["id"], "start")["state"] == "running"
    assert all(offered(fleet, device) for device in ten)


def test_filters_pick_targets_and_update_modes_are_honoured(fleet: Fleet,
                                                            ten: tuple[Device, ...]) -> None:
    for device in ten[:4]:
        fleet.client.put(f"{device.root}/configData", headers=device.headers,
                         json={"data": {"variant": "edge-200", "feed": "beta"}})
    fleet.client.patch(f"{fleet.api}/targets/{ten[2].controller_id}",
                       headers=fleet.admin.headers, json={"update_mode": "manual"})
    fleet.client.patch(f"{fleet.api}/targets/{ten[9].controller_id}",
                       headers=fleet.admin.headers, json={"tags": ["lab"]})
    assert fleet.client.post(f"{fleet.api}/rollouts", headers=fleet.admin.headers, json={
        "name": "none", "module_id": fleet.module_id, "waves": [{"percent": 100}],
        "target_filter": {"variant": "core-900"}}).status_code == 422
    made = rollout(fleet, target_filter={"variant": "edge-200", "feed": "beta"})
    assert made["targets"] == 4
    started = step(fleet, made["id"], "start")
    assert started["waves"][0]["skipped"] == 1  # ten[2] takes no rollouts
    assert offered(fleet, ten[2]) is None
    assert all(offered(fleet, device) for device in (ten[0], ten[1], ten[3]))
    assert all(offered(fleet, device) is None for device in ten[4:])
    for device in (ten[0], ten[1], ten[3]):
        finish(fleet, device)
    assert shown(fleet, made["id"])["state"] == "finished"
    tagged = rollout(fleet, target_filter={"tags": ["lab"]})
    assert tagged["targets"] == 1


def test_rollout_input_is_checked(fleet: Fleet) -> None:
    bodies: list[dict[str, Any]] = [{"waves": []}, {"waves": [{"percent": 0}]},
                                    {"waves": [{"percent": 10, "count": 1}]},
                                    {"success_percent": 0},
                                    {"maintenance": {"start": "25:00", "minutes": 5}}]
    for body in bodies:
        answer = fleet.client.post(f"{fleet.api}/rollouts", headers=fleet.admin.headers,
                                   json={"name": "x", "module_id": fleet.module_id,
                                         "waves": [{"percent": 100}], **body})
        assert answer.status_code == 422, (body, answer.text)
    answer = fleet.client.post(f"{fleet.api}/rollouts", headers=fleet.admin.headers,
                               json={"name": "x", "module_id": 999, "waves": [{"count": 1}]})
    assert answer.status_code == 404
