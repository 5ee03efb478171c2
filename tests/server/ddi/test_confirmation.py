"""DDI's optional user consent (checklist rows 12 to 16): with confirmation required an action
waits for the device (`confirmationBase` instead of `deploymentBase`), a confirmation offers
it, a denial keeps it waiting; auto-confirm consents in advance and confirms what waits."""

from __future__ import annotations

from tests.server.ddi.conftest import Fleet


def links(fleet: Fleet, device_index: int = 0) -> dict[str, str]:
    document = fleet.poll(fleet.devices[device_index]).json()
    return {name: link["href"] for name, link in document["_links"].items()}


def confirm(fleet: Fleet, action_id: int, consent: str, *details: str) -> int:
    device = fleet.devices[0]
    status: int = fleet.client.post(
        f"{device.root}/confirmationBase/{action_id}/feedback", headers=device.headers,
        json={"confirmation": consent, "code": 200, "details": list(details)}).status_code
    return status


def test_an_action_waits_for_consent_and_a_confirmation_offers_it(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device, confirmation_required=True)
    found = links(fleet)
    assert "deploymentBase" not in found
    assert found["confirmationBase"].split("?")[0].endswith(f"/confirmationBase/{action_id}")
    overview = fleet.client.get(f"{device.root}/confirmationBase", headers=device.headers)
    assert overview.status_code == 200
    assert overview.json()["autoConfirm"] == {"active": False}
    assert set(overview.json()["_links"]) == {"activateAutoConfirm", "confirmationBase"}
    waiting = fleet.client.get(f"{device.root}/confirmationBase/{action_id}?actionHistory=1",
                               headers=device.headers).json()
    assert waiting["id"] == str(action_id)
    assert waiting["confirmation"]["chunks"][0]["artifacts"][0]["filename"] == "firmware.swu"
    assert waiting["actionHistory"]["status"] == "WAITING_CONFIRMATION"
    assert fleet.client.get(f"{device.root}/deploymentBase/{action_id}",
                            headers=device.headers).status_code == 404
    assert confirm(fleet, action_id, "denied", "not now") == 200
    assert fleet.action(action_id)["state"] == "waiting_confirmation"
    assert confirm(fleet, action_id, "confirmed", "go ahead") == 200
    assert fleet.action(action_id)["state"] == "running"
    assert "deploymentBase" in links(fleet) and "confirmationBase" not in links(fleet)
    assert confirm(fleet, action_id, "confirmed") == 409  # nothing waits any more
    steps = [s["messages"] for s in fleet.action(action_id)["history"]]
    assert steps[-1] == ["go ahead", "confirmed by the device"]


def test_a_wrong_consent_is_400(fleet: Fleet) -> None:
    action_id = fleet.assign(fleet.devices[0], confirmation_required=True)
    assert confirm(fleet, action_id, "maybe") == 400
    assert fleet.action(action_id)["state"] == "waiting_confirmation"


def test_auto_confirm_consents_in_advance_and_confirms_what_waits(fleet: Fleet) -> None:
    device = fleet.devices[0]
    first = fleet.assign(device, confirmation_required=True)
    answer = fleet.client.post(f"{device.root}/confirmationBase/activateAutoConfirm",
                               headers=device.headers,
                               json={"initiator": "site admin", "remark": "night shift"})
    assert answer.status_code == 200
    assert fleet.action(first)["state"] == "running"
    overview = fleet.client.get(f"{device.root}/confirmationBase",
                                headers=device.headers).json()
    assert overview["autoConfirm"] == {"active": True, "initiator": "site admin",
                                       "remark": "night shift"}
    assert "deactivateAutoConfirm" in overview["_links"]
    fleet.feedback(device, first, "closed", "success")
    second = fleet.assign(device, confirmation_required=True)
    assert fleet.action(second)["state"] == "running"  # consented in advance
    fleet.feedback(device, second, "closed", "success")
    assert fleet.client.post(f"{device.root}/confirmationBase/deactivateAutoConfirm",
                             headers=device.headers).status_code == 200
    third = fleet.assign(device, confirmation_required=True)
    assert fleet.action(third)["state"] == "waiting_confirmation"


def test_the_tenant_setting_makes_every_assignment_wait(fleet: Fleet) -> None:
    answer = fleet.client.put(f"{fleet.api}/ddi", headers=fleet.admin.headers,
                              json={"polling_seconds": 60, "confirmation_required": True})
    assert answer.json()["confirmation_required"] is True
    waiting = fleet.assign(fleet.devices[1])
    assert fleet.action(waiting)["state"] == "waiting_confirmation"
    not_waiting = fleet.assign(fleet.devices[0], confirmation_required=False)
    assert fleet.action(not_waiting)["state"] == "running"
