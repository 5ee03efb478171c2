"""DDI conformance, endpoint by endpoint, following shared/ddi-checklist.md: the root poll
(links, ETag/304, registration), configData, deploymentBase and its feedback, cancelAction,
installedBase, artifacts (listing, download with ranges and validators, .MD5SUM) and auth.
Every test runs on SQLite and on PostgreSQL (the `client` fixture)."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.server.ddi.conftest import ARTIFACT, TENANT, Device, Fleet, add_devices, make_module


def links(fleet: Fleet, device: Device) -> dict[str, str]:
    answer = fleet.poll(device)
    assert answer.status_code == 200, answer.text
    return {name: link["href"] for name, link in answer.json()["_links"].items()}


def path_of(href: str) -> str:
    return href.removeprefix("http://kiln.test")


# --- 1: root poll ------------------------------------------------------------------------


def test_root_poll_of_a_new_target_asks_for_its_attributes(fleet: Fleet) -> None:
    device = fleet.devices[0]
    answer = fleet.poll(device)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    document = answer.json()
    assert document["config"] == {"polling": {"sleep": "00:05:00"}}
    assert document["_links"] == {
        "configData": {"href": f"http://kiln.test{device.root}/configData"}}


def test_root_poll_answers_304_to_its_own_etag_and_a_new_etag_after_a_change(
        fleet: Fleet) -> None:
    device = fleet.devices[0]
    first = fleet.poll(device)
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{40}"', etag)
    again = fleet.poll(device, **{"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    fleet.assign(device)
    changed = fleet.poll(device, **{"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert "deploymentBase" in changed.json()["_links"]


def test_polling_interval_is_the_tenants(fleet: Fleet) -> None:
    answer = fleet.client.put(f"{fleet.api}/ddi", headers=fleet.admin.headers,
                              json={"polling_seconds": 3725})
    assert answer.status_code == 200, answer.text
    assert fleet.poll(fleet.devices[0]).json()["config"]["polling"]["sleep"] == "01:02:05"


def test_deployment_link_carries_the_numeric_action_id_and_a_hash(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    href = links(fleet, device)["deploymentBase"]
    assert re.fullmatch(rf"http://kiln\.test{device.root}/deploymentBase/{action_id}"
                        r"\?c=[0-9a-f]+", href)
    assert "cancelAction" not in links(fleet, device)


def test_a_polls_do_not_write_last_seen_until_the_batch_is_flushed(fleet: Fleet) -> None:
    device = fleet.devices[0]
    before = fleet.target(device)["last_seen_ns"]
    fleet.poll(device)
    assert fleet.target(device)["last_seen_ns"] == before
    context = fleet.context
    assert context.ddi.seen.flush(context.engine) == 1
    seen = fleet.target(device)["last_seen_ns"]
    assert isinstance(seen, int) and (before is None or seen > before)
    assert fleet.target(device)["address"] == "testclient"


# --- 2: configData -------------------------------------------------------------------------


def test_config_data_merges_replaces_and_removes(fleet: Fleet) -> None:
    device = fleet.devices[0]
    url = f"{device.root}/configData"

    def put(body: object) -> int:
        status: int = fleet.client.put(url, headers=device.headers, json=body).status_code
        return status

    assert put({"id": "", "time": "x", "status": {"execution": "closed", "result": {
        "finished": "success"}}, "mode": "merge",
        "data": {"variant": "qemu-lab", "hwrev": "1"}}) == 200
    assert put({"mode": "merge", "data": {"hwrev": "2"}}) == 200
    assert fleet.target(device)["attributes"] == {"variant": "qemu-lab", "hwrev": "2"}
    assert put({"mode": "remove", "data": {"hwrev": ""}}) == 200
    assert fleet.target(device)["attributes"] == {"variant": "qemu-lab"}
    assert put({"mode": "replace", "data": {"installed": "1.0"}}) == 200
    assert fleet.target(device)["attributes"] == {"installed": "1.0"}
    assert "configData" not in links(fleet, device)


@pytest.mark.parametrize("body", [{"mode": "merge", "data": {}}, {"mode": "merge"},
                                  {"mode": "sideways", "data": {"a": "b"}},
                                  {"data": {"a": 1}}, ["not", "an", "object"]])
def test_config_data_refuses_what_is_not_attributes(fleet: Fleet, body: object) -> None:
    device = fleet.devices[0]
    answer = fleet.client.put(f"{device.root}/configData", headers=device.headers, json=body)
    assert answer.status_code == 400, answer.text
    assert fleet.target(device)["attributes"] == {}


# --- 3/4: deploymentBase and feedback --------------------------------------------------


def test_deployment_base_names_the_chunk_and_its_artifact(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    answer = fleet.client.get(path_of(links(fleet, device)["deploymentBase"]),
                              headers=device.headers)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["id"] == str(action_id)
    deployment = document["deployment"]
    assert (deployment["download"], deployment["update"]) == ("forced", "forced")
    assert "maintenanceWindow" not in deployment
    (chunk,) = deployment["chunks"]
    assert (chunk["part"], chunk["name"], chunk["version"]) == ("os", "firmware", "1.0")
    (artifact,) = chunk["artifacts"]
    assert artifact["filename"] == "firmware.swu"
    assert artifact["size"] == len(ARTIFACT)
    assert artifact["hashes"] == {"sha1": hashlib.sha1(ARTIFACT).hexdigest(),  # noqa: S324
                                  "md5": hashlib.md5(ARTIFACT).hexdigest(),  # noqa: S324
                                  "sha256": hashlib.sha256(ARTIFACT).hexdigest()}
    base = f"http://kiln.test{device.root}/softwaremodules/{fleet.module_id}/artifacts"
    assert artifact["_links"] == {"download-http": {"href": f"{base}/firmware.swu"},
                                  "md5sum-http": {"href": f"{base}/firmware.swu.MD5SUM"}}
    assert "actionHistory" not in document


@pytest.mark.parametrize(("kind", "download", "update"), [
    ("soft", "attempt", "attempt"), ("download_only", "forced", "skip")])
def test_deployment_handling_follows_the_action_kind(fleet: Fleet, kind: str, download: str,
                                                     update: str) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device, kind=kind)
    deployment = fleet.client.get(f"{device.root}/deploymentBase/{action_id}",
                                  headers=device.headers).json()["deployment"]
    assert (deployment["download"], deployment["update"]) == (download, update)


def test_a_closed_maintenance_window_skips_the_update_and_says_so(fleet: Fleet) -> None:
    device = fleet.devices[0]
    window = {"start": "00:00", "minutes": 1, "weekdays": [0, 1, 2, 3, 4, 5, 6]}
    action_id = fleet.assign(device, maintenance=window)
    deployment = fleet.client.get(f"{device.root}/deploymentBase/{action_id}",
                                  headers=device.headers).json()["deployment"]
    assert deployment["maintenanceWindow"] in {"available", "unavailable"}
    expected = "forced" if deployment["maintenanceWindow"] == "available" else "skip"
    assert (deployment["download"], deployment["update"]) == ("forced", expected)


def test_feedback_moves_the_action_through_its_states_to_finished(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    steps = [("download", "none", "download"), ("downloaded", "none", "downloaded"),
             ("proceeding", "none", "running"), ("scheduled", "none", "running"),
             ("resumed", "none", "running"), ("rejected", "none", "warning")]
    for execution, finished, expected in steps:
        answer = fleet.feedback(device, action_id, execution, finished, details=(execution,))
        assert answer.status_code == 200, answer.text
        assert fleet.action(action_id)["state"] == expected
        assert "deploymentBase" in links(fleet, device)
    assert fleet.feedback(device, action_id, "closed", "success",
                          details=("installed",)).status_code == 200
    action = fleet.action(action_id)
    assert (action["state"], action["active"]) == ("finished", False)
    assert [step["state"] for step in action["history"]] == [
        "running", "download", "downloaded", "running", "running", "running", "warning",
        "finished"]
    found = links(fleet, device)
    assert "deploymentBase" not in found
    assert path_of(found["installedBase"]) == f"{device.root}/installedBase/{action_id}"
    assert "configData" in found  # attributes again after a successful update
    assert fleet.target(device)["installed_module_id"] == fleet.module_id


def test_feedback_on_a_closed_action_is_gone_and_a_failure_is_an_error(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    assert fleet.feedback(device, action_id, "closed", "failure",
                          details=("disk full",)).status_code == 200
    action = fleet.action(action_id)
    assert (action["state"], action["last_message"]) == ("error", "disk full")
    assert fleet.feedback(device, action_id, "proceeding").status_code == 410
    assert fleet.feedback(device, action_id, "closed", "success").status_code == 410
    assert fleet.target(device)["installed_module_id"] is None


@pytest.mark.parametrize("body", [{"status": {"execution": "downloading"}},
                                  {"status": {"execution": "closed",
                                              "result": {"finished": "maybe"}}},
                                  {"status": "closed"}, {}])
def test_feedback_with_a_wrong_value_is_400(fleet: Fleet, body: object) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    answer = fleet.client.post(f"{device.root}/deploymentBase/{action_id}/feedback",
                               headers=device.headers, json=body)
    assert answer.status_code == 400, answer.text
    assert fleet.action(action_id)["state"] == "running"


def test_action_history_lists_messages_newest_first(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    fleet.feedback(device, action_id, "download", details=("fetching",))
    fleet.feedback(device, action_id, "proceeding", details=("writing",))
    answer = fleet.client.get(f"{device.root}/deploymentBase/{action_id}?actionHistory=2",
                              headers=device.headers)
    history = answer.json()["actionHistory"]
    assert history["status"] == "RUNNING"
    assert history["messages"] == ["writing", "proceeding/none"]


def test_another_targets_or_an_unknown_action_is_404(fleet: Fleet) -> None:
    mine, other = fleet.devices
    action_id = fleet.assign(mine)
    for device, number in ((other, action_id), (mine, action_id + 100)):
        assert fleet.client.get(f"{device.root}/deploymentBase/{number}",
                                headers=device.headers).status_code == 404
        assert fleet.feedback(device, number, "proceeding").status_code == 404
    assert fleet.action(action_id)["state"] == "running"


# --- 5/6: cancelAction -------------------------------------------------------------------


def test_cancel_reaches_the_device_and_its_feedback_ends_the_action(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    assert fleet.client.get(f"{device.root}/cancelAction/{action_id}",
                            headers=device.headers).status_code == 404
    answer = fleet.client.post(f"{fleet.api}/actions/{action_id}/cancel",
                               headers=fleet.admin.headers, json={})
    assert answer.status_code == 200, answer.text
    found = links(fleet, device)
    assert "deploymentBase" not in found
    assert path_of(found["cancelAction"]) == f"{device.root}/cancelAction/{action_id}"
    assert fleet.client.get(f"{device.root}/cancelAction/{action_id}",
                            headers=device.headers).json() == {
        "id": str(action_id), "cancelAction": {"stopId": str(action_id)}}
    assert fleet.client.get(f"{device.root}/deploymentBase/{action_id}",
                            headers=device.headers).status_code == 404
    assert fleet.feedback(device, action_id, "proceeding",
                          path="cancelAction").status_code == 200
    assert fleet.action(action_id)["state"] == "canceling"
    assert fleet.feedback(device, action_id, "closed", "success",
                          path="cancelAction").status_code == 200
    assert (fleet.action(action_id)["state"], fleet.action(action_id)["active"]) == (
        "canceled", False)
    assert "cancelAction" not in links(fleet, device)
    assert fleet.feedback(device, action_id, "closed", "success",
                          path="cancelAction").status_code == 410


def test_a_rejected_cancel_leaves_the_action_running(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    fleet.client.post(f"{fleet.api}/actions/{action_id}/cancel", headers=fleet.admin.headers,
                      json={})
    assert fleet.feedback(device, action_id, "rejected", path="cancelAction",
                          details=("already writing",)).status_code == 200
    action = fleet.action(action_id)
    assert (action["state"], action["active"]) == ("running", True)
    assert "cancel_rejected" in [s["state"] for s in action["history"]]
    assert "deploymentBase" in links(fleet, device)


def test_a_new_assignment_cancels_the_open_one_first(fleet: Fleet) -> None:
    device = fleet.devices[0]
    first = fleet.assign(device)
    second_module = make_module(fleet.client, fleet.admin, version="2.0")
    second = fleet.assign(device, module_id=second_module)
    assert path_of(links(fleet, device)["cancelAction"]).endswith(f"/cancelAction/{first}")
    fleet.feedback(device, first, "canceled", path="cancelAction")
    assert path_of(links(fleet, device)["deploymentBase"]).split("?")[0].endswith(
        f"/deploymentBase/{second}")


# --- 7/8: installedBase --------------------------------------------------------------------


def test_installed_base_shows_the_finished_action_and_not_an_active_one(fleet: Fleet) -> None:
    device = fleet.devices[0]
    action_id = fleet.assign(device)
    url = f"{device.root}/installedBase/{action_id}"
    assert fleet.client.get(url, headers=device.headers).status_code == 404
    fleet.feedback(device, action_id, "closed", "success")
    answer = fleet.client.get(url + "?actionHistory=-1", headers=device.headers)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["id"] == str(action_id)
    assert document["deployment"]["chunks"][0]["version"] == "1.0"
    assert document["actionHistory"]["status"] == "FINISHED"


def test_a_device_declares_its_factory_image(fleet: Fleet) -> None:
    device = fleet.devices[0]
    url = f"{device.root}/installedBase"
    body = {"name": "firmware", "version": "1.0"}
    assert fleet.client.put(url, headers=device.headers, json=body).status_code == 201
    assert fleet.client.put(url, headers=device.headers, json=body).status_code == 200
    assert fleet.target(device)["installed_module_id"] == fleet.module_id
    assert "installedBase" in links(fleet, device)
    unknown = fleet.client.put(url, headers=device.headers,
                               json={"name": "firmware", "version": "9.9"})
    assert unknown.status_code == 404
    assert fleet.client.put(url, headers=device.headers, json={"name": 1}).status_code == 400


# --- 9/10/11: artifacts --------------------------------------------------------------------


def test_artifacts_are_listed_only_for_an_assigned_module(fleet: Fleet) -> None:
    mine, other = fleet.devices
    fleet.assign(mine)
    url = f"/softwaremodules/{fleet.module_id}/artifacts"
    answer = fleet.client.get(mine.root + url, headers=mine.headers)
    assert answer.status_code == 200
    assert [a["filename"] for a in answer.json()] == ["firmware.swu"]
    assert fleet.client.get(other.root + url, headers=other.headers).status_code == 404
    assert fleet.client.get(other.root + url + "/firmware.swu",
                            headers=other.headers).status_code == 404


def test_artifact_download_with_head_ranges_and_validators(fleet: Fleet) -> None:
    device = fleet.devices[0]
    fleet.assign(device)
    url = f"{device.root}/softwaremodules/{fleet.module_id}/artifacts/firmware.swu"
    sha1 = hashlib.sha1(ARTIFACT).hexdigest()  # noqa: S324
    size = len(ARTIFACT)
    head = fleet.client.head(url, headers=device.headers)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == f'"{sha1}"'
    assert head.headers["accept-ranges"] == "bytes"
    assert head.headers["content-length"] == str(size)
    assert 'filename="firmware.swu"' in head.headers["content-disposition"]
    whole = fleet.client.get(url, headers=device.headers)
    assert whole.content == ARTIFACT
    resumed = fleet.client.get(url, headers={**device.headers, "Range": "bytes=10000-"})
    assert resumed.status_code == 206
    assert resumed.content == ARTIFACT[10000:]
    assert resumed.headers["content-range"] == f"bytes 10000-{size - 1}/{size}"
    beyond = fleet.client.get(url, headers={**device.headers, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    stale = fleet.client.get(url, headers={**device.headers, "Range": "bytes=0-9",
                                           "If-Range": '"0000"'})
    assert (stale.status_code, stale.content) == (200, ARTIFACT)
    fresh = fleet.client.get(url, headers={**device.headers, "Range": "bytes=0-9",
                                           "If-Range": f'"{sha1}"'})
    assert (fresh.status_code, fresh.content) == (206, ARTIFACT[:10])
    refused = fleet.client.get(url, headers={**device.headers, "If-Match": '"0000"'})
    assert refused.status_code == 412


def test_several_ranges_answer_multipart_byteranges(fleet: Fleet) -> None:
    device = fleet.devices[0]
    fleet.assign(device)
    url = f"{device.root}/softwaremodules/{fleet.module_id}/artifacts/firmware.swu"
    answer = fleet.client.get(url, headers={**device.headers, "Range": "bytes=0-3,-4"})
    assert answer.status_code == 206
    media, _, boundary = answer.headers["content-type"].partition("; boundary=")
    assert media == "multipart/byteranges"
    assert int(answer.headers["content-length"]) == len(answer.content)
    size = len(ARTIFACT)
    parts = answer.content.split(f"--{boundary}".encode())
    assert parts[-1] == b"--\r\n"
    bodies = [part.split(b"\r\n\r\n", 1) for part in parts[1:-1]]
    assert [head.decode().splitlines()[-1] for head, _ in bodies] == [
        f"Content-Range: bytes 0-3/{size}", f"Content-Range: bytes {size - 4}-{size - 1}/{size}"]
    assert [body.removesuffix(b"\r\n") for _, body in bodies] == [ARTIFACT[:4], ARTIFACT[-4:]]


def test_md5sum_is_the_artifacts_in_md5sum_format(fleet: Fleet) -> None:
    device = fleet.devices[0]
    fleet.assign(device)
    url = f"{device.root}/softwaremodules/{fleet.module_id}/artifacts/firmware.swu.MD5SUM"
    answer = fleet.client.get(url, headers=device.headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == f"{hashlib.md5(ARTIFACT).hexdigest()}  firmware.swu\n"  # noqa: S324


# --- auth ----------------------------------------------------------------------------------


def test_bad_or_borrowed_credentials_are_401_with_no_body(fleet: Fleet) -> None:
    mine, other = fleet.devices
    for headers in ({}, {"Authorization": "TargetToken wrong"},
                    {"Authorization": "Bearer " + mine.token},
                    {"Authorization": f"TargetToken {other.token}"},
                    {"Authorization": "GatewayToken nothing-set"}):
        answer = fleet.client.get(mine.root, headers=headers)
        assert (answer.status_code, answer.content) == (401, b""), headers
        answer = fleet.client.put(f"{mine.root}/configData", headers=headers,
                                  json={"data": {"a": "b"}})
        assert (answer.status_code, answer.content) == (401, b""), headers
    fleet.poll(mine)  # cached now: a borrowed token must still fail against the cache
    answer = fleet.client.get(mine.root, headers={"Authorization": f"TargetToken {other.token}"})
    assert answer.status_code == 401


def test_a_gateway_token_acts_for_any_controller_and_registers_new_ones(fleet: Fleet) -> None:
    answer = fleet.client.post(f"{fleet.api}/ddi/gateway-token", headers=fleet.admin.headers)
    assert answer.status_code == 201
    gateway = {"Authorization": f"GatewayToken {answer.json()['gateway_token']}"}
    assert fleet.client.get(fleet.devices[0].root, headers=gateway).status_code == 200
    assert fleet.client.get(f"/{TENANT}/controller/v1/newcomer",
                            headers=gateway).status_code == 200
    newcomer = fleet.client.get(f"{fleet.api}/targets/newcomer", headers=fleet.admin.headers)
    assert newcomer.status_code == 200
    other_tenant = fleet.client.get("/elsewhere/controller/v1/dev-1", headers=gateway)
    assert other_tenant.status_code == 401
    replaced = fleet.client.post(f"{fleet.api}/ddi/gateway-token", headers=fleet.admin.headers)
    assert replaced.status_code == 201
    assert fleet.client.get(fleet.devices[0].root, headers=gateway).status_code == 401


def test_a_target_token_serves_its_tenant_only(fleet: Fleet) -> None:
    device = fleet.devices[0]
    answer = fleet.client.get(f"/elsewhere/controller/v1/{device.controller_id}",
                              headers=device.headers)
    assert answer.status_code == 401


def test_an_unknown_controller_with_a_target_token_is_not_registered(fleet: Fleet) -> None:
    answer = fleet.client.get(f"/{TENANT}/controller/v1/stranger",
                              headers={"Authorization": f"TargetToken {fleet.devices[0].token}"})
    assert answer.status_code == 401
    assert fleet.client.get(f"{fleet.api}/targets/stranger",
                            headers=fleet.admin.headers).status_code == 404


def test_certificate_headers_count_only_from_a_trusted_proxy(fleet: Fleet) -> None:
    device = fleet.devices[0]
    fleet.client.put(f"{fleet.api}/ddi", headers=fleet.admin.headers,
                     json={"polling_seconds": 300, "trusted_issuers": ["issuer-hash"]})
    vouched = {"X-Controller-Id": device.controller_id, "X-Authority": "issuer-hash"}
    assert fleet.client.get(device.root, headers=vouched).status_code == 401  # not trusted
    context = fleet.context
    trusting = context.config.__class__(**{**context.config.__dict__,
                                           "ddi_trusted_proxies": ("testclient",)})
    object.__setattr__(context, "config", trusting)
    assert fleet.client.get(device.root, headers=vouched).status_code == 200
    for wrong in ({**vouched, "X-Controller-Id": "dev-2"},
                  {**vouched, "X-Authority": "someone-else"}):
        assert fleet.client.get(device.root, headers=wrong).status_code == 401


def test_tenants_are_apart(fleet: Fleet) -> None:
    elsewhere = fleet.client.post("/api/v1/tenants/elsewhere/targets",
                                  headers=fleet.admin.headers,
                                  json={"targets": [{"controller_id": "dev-1"}]})
    assert elsewhere.status_code == 201
    token = elsewhere.json()["targets"][0]["target_token"]
    twin = Device("dev-1", token)
    assert fleet.client.get("/elsewhere/controller/v1/dev-1",
                            headers=twin.headers).status_code == 200
    assert fleet.client.get(fleet.devices[0].root, headers=twin.headers).status_code == 401
    assert fleet.client.post("/api/v1/tenants/elsewhere/targets/dev-1/actions",
                             headers=fleet.admin.headers,
                             json={"module_id": fleet.module_id}).status_code == 404


def test_bulk_registration_refuses_duplicates_whole(fleet: Fleet) -> None:
    answer = fleet.client.post(f"{fleet.api}/targets", headers=fleet.admin.headers,
                               json={"targets": [{"controller_id": "fresh"},
                                                 {"controller_id": "dev-1"}]})
    assert answer.status_code == 409
    assert fleet.client.get(f"{fleet.api}/targets/fresh",
                            headers=fleet.admin.headers).status_code == 404
    devices = add_devices(fleet.client, fleet.admin, "fresh")
    assert fleet.poll(devices[0]).status_code == 200
