"""The update agent against a real `kiln server` on loopback, with RECOVERY in a directory:
attributes and the installed image reported, a deployment downloaded (verified) and a trial
restore requested that keeps DATA; after the "reboot", success, or the fall-back reported as
a failure with its reason; cancel, download-only, a closed maintenance window, and a server
that cannot be reached (nothing lost). The ramdisk's part between the cycles (the restore,
its boot counting) is played by the `recovery` functions it calls; the QEMU test
(tests/agent/test_update_qemu.py) runs the real thing."""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from agent import pending
from agent.config import load_config
from agent.ddi import DdiClient
from agent.updater import Outcome, Updater
from kiln.events import Event, EventRecorder, Result, Sender
from kiln.image.signing import SigningKey, TrustStore
from kiln.serverclient import ServerError
from recovery import boots
from recovery.layout import RecoveryLayout, Request, StateFile
from recovery.requests import read_restore_request
from recovery.store import ImageStore, StoredImage
from tests.server.live import LiveServer
from tests.server.signed_images import build_test_image

pytestmark = pytest.mark.allow_commands("python", "tar")
TENANT = "default"
SERIAL = "SN-AGENT-1"


@dataclass
class Unit:
    """A unit's RECOVERY and /etc/kiln in directories, and a server that knows it."""

    server: LiveServer
    admin_token: str
    recovery: Path
    etc: Path
    images: dict[str, Path]
    modules: dict[str, int]
    reboots: list[str] = field(default_factory=list)

    @property
    def layout(self) -> RecoveryLayout:
        return RecoveryLayout(self.recovery)

    def api(self, method: str, path: str, **options: Any) -> Any:
        answer = requests.request(method, f"{self.server.url}/api/v1/tenants/{TENANT}{path}",
                                  headers={"Authorization": f"Bearer {self.admin_token}"},
                                  timeout=30, **options)
        assert answer.ok, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def updater(self, send_events: Sender | None = None) -> Updater:
        """The agent as it starts after a boot."""
        config = load_config(etc=self.etc, recovery=self.recovery)
        client = DdiClient(config.controller_url, token=config.token, verify=config.verify)
        updater = Updater(config, client=client, reboot=lambda: self.reboots.append("reboot"),
                          send_events=send_events)
        updater.start()
        return updater

    def assign(self, version: str, **fields: Any) -> int:
        action_id: int = self.api("POST", f"/targets/{SERIAL}/actions",
                                  json={"module_id": self.modules[version], **fields})["id"]
        return action_id

    def action(self, action_id: int) -> dict[str, Any]:
        found: dict[str, Any] = self.api("GET", f"/actions/{action_id}")
        return found

    def restore_as_the_ramdisk_would(self, *, boots_up: bool) -> StoredImage:
        """The requested restore: its image installed on trial; `boots_up` False: its first
        boot is never confirmed, so the next boot gives it up and restores the previous."""
        request = read_restore_request(self.layout)
        assert request is not None and request.trial and request.keep_data
        store = ImageStore(self.recovery, TrustStore.from_paths([self.layout.keys]))
        image = store.pick(verify=True, prefer=request.image_id)
        previous = boots.installed(self.layout)
        boots.record_installed(self.layout, image_id=image.image_id, label=image.label,
                               trial=True)
        self.layout.request_file(Request.RESTORE).unlink()
        counted = boots.count_handover(self.layout, label=image.label)
        if boots_up:
            return image
        assert counted.given_up and previous is not None
        store.history.give_up(image.image_id, reason="the update did not confirm its first "
                              "boot", limit=store.failure_limit)
        boots.record_installed(self.layout, image_id=previous.image_id, label=previous.label)
        boots.count_handover(self.layout, label=previous.label)
        fallback = store.pick(verify=False)
        assert fallback.image_id == previous.image_id
        return fallback


@pytest.fixture
def unit(tmp_path: Path, signing_dir: Path, signing_key: SigningKey) -> Iterator[Unit]:
    server = LiveServer(data_dir=tmp_path / "server")
    server.trust(signing_dir / "test.pub")
    server.run()
    try:
        _password, token = server.admin()
        images = {version: build_test_image(tmp_path, [signing_key], version=version,
                                            seed=n)[0]
                  for n, version in enumerate(("1.0.0", "2.0.0", "3.0.0"))}
        for image in images.values():
            server.push_image(token, image)
        recovery, etc = tmp_path / "recovery", tmp_path / "etc-kiln"
        layout = RecoveryLayout(recovery)
        layout.keys.mkdir(parents=True)
        layout.state.mkdir()
        shutil.copy(signing_dir / "test.pub", layout.keys / "test.pub")
        factory = ImageStore(recovery, TrustStore.from_paths([layout.keys])).add(images["1.0.0"])
        boots.record_installed(layout, image_id=factory.image_id, label=factory.label)
        made = requests.post(f"{server.url}/api/v1/tenants/{TENANT}/targets", timeout=30,
                             headers={"Authorization": f"Bearer {token}"},
                             json={"targets": [{"controller_id": SERIAL}]}).json()
        etc.mkdir()
        (etc / StateFile.DEVICE_TOKEN.value).write_text(made["targets"][0]["target_token"])
        (etc / StateFile.IDENTITY.value).write_text(json.dumps(
            {"serial": SERIAL, "variant": "qemu-lab"}))
        (etc / StateFile.SERVER.value).write_text(json.dumps({
            "events_url": f"{server.url}/api/v1/events", "units_url": f"{server.url}/u",
            "credentials_url": f"{server.url}/c",
            "ddi_url": f"{server.url}/{TENANT}/controller/v1"}))
        modules = {module["version"].split("+")[0]: module["id"] for module in requests.get(
            f"{server.url}/api/v1/tenants/{TENANT}/softwaremodules", timeout=30,
            headers={"Authorization": f"Bearer {token}"}).json()["softwaremodules"]}
        yield Unit(server=server, admin_token=token, recovery=recovery, etc=etc,
                   images=images, modules=modules)
    finally:
        server.stop()


def test_the_agent_reports_the_unit_and_its_factory_image(unit: Unit) -> None:
    result = unit.updater().cycle()
    assert result.outcome is Outcome.IDLE
    assert result.sleep_seconds == 300  # the server's polling interval
    target = unit.api("GET", f"/targets/{SERIAL}")
    assert target["attributes"] == {"serial": SERIAL, "variant": "qemu-lab",
                                    "installed": "demo 1.0.0 (build 1)"}
    assert target["installed_module_id"] == unit.modules["1.0.0"]


def test_an_update_is_downloaded_restored_on_trial_and_reported_after_the_reboot(
        unit: Unit) -> None:
    action_id = unit.assign("2.0.0")
    result = unit.updater().cycle()
    assert result.outcome is Outcome.RESTORING
    assert unit.reboots == ["reboot"]
    update = pending.load(unit.layout)
    assert update is not None and update.action_id == action_id
    request = read_restore_request(unit.layout)
    assert request is not None and request.image_id == update.image_id and request.trial
    assert [s["state"] for s in unit.action(action_id)["history"]] == [
        "running", "download", "downloaded", "running"]
    installed = unit.restore_as_the_ramdisk_would(boots_up=True)
    after = unit.updater().cycle()  # a new boot: the agent confirms it, then reports
    assert after.outcome is Outcome.REPORTED
    action = unit.action(action_id)
    assert (action["state"], action["active"]) == ("finished", False)
    assert action["last_message"] == f"{installed.label} is installed and running; DATA kept"
    assert pending.load(unit.layout) is None
    now = boots.installed(unit.layout)
    assert now is not None and now.image_id == installed.image_id and not now.trial
    assert boots.unconfirmed(unit.layout) is None
    assert unit.api("GET", f"/targets/{SERIAL}")["installed_module_id"] == unit.modules["2.0.0"]


def test_an_update_that_does_not_boot_is_reported_as_a_failure_with_its_reason(
        unit: Unit) -> None:
    action_id = unit.assign("3.0.0")
    assert unit.updater().cycle().outcome is Outcome.RESTORING
    fallback = unit.restore_as_the_ramdisk_would(boots_up=False)
    result = unit.updater().cycle()
    assert result.outcome is Outcome.FAILED
    action = unit.action(action_id)
    assert (action["state"], action["active"]) == ("error", False)
    assert action["history"][-1]["messages"][:2] == [
        "demo 3.0.0 (build 1) did not come up: the update did not confirm its first boot",
        f"the unit runs {fallback.label} again"]
    assert pending.load(unit.layout) is None


def test_a_cancel_is_acknowledged_and_nothing_is_installed(unit: Unit) -> None:
    action_id = unit.assign("2.0.0")
    unit.api("POST", f"/actions/{action_id}/cancel", json={})
    assert unit.updater().cycle().outcome is Outcome.CANCELED
    assert unit.action(action_id)["state"] == "canceled"
    assert not unit.layout.requested(Request.RESTORE) and unit.reboots == []


ANOTHER_DAY = (datetime.datetime.now(datetime.UTC).weekday() + 3) % 7  # closed all today


@pytest.mark.parametrize(("fields", "why"), [
    ({"kind": "download_only"}, "the action only downloads"),
    ({"maintenance": {"start": "00:00", "minutes": 60, "weekdays": [ANOTHER_DAY]}},
     "the maintenance window is closed")])
def test_an_update_that_may_not_install_yet_is_only_downloaded(unit: Unit,
                                                                fields: dict[str, Any],
                                                                why: str) -> None:
    action_id = unit.assign("2.0.0", **fields)
    result = unit.updater().cycle()
    assert result.outcome is Outcome.DOWNLOADED
    assert result.message.endswith(why)
    assert not unit.layout.requested(Request.RESTORE) and unit.reboots == []
    stored = [image.manifest.version for image in ImageStore(
        unit.recovery, TrustStore.from_paths([unit.layout.keys])).images()]
    assert "2.0.0" in stored
    assert unit.action(action_id)["state"] == "downloaded"


def test_nothing_is_lost_while_the_server_is_away(unit: Unit) -> None:
    action_id = unit.assign("2.0.0")
    assert unit.updater().cycle().outcome is Outcome.RESTORING
    unit.restore_as_the_ramdisk_would(boots_up=True)
    unit.server.stop()
    offline = unit.updater().cycle()
    assert offline.outcome is Outcome.OFFLINE
    assert pending.load(unit.layout) is not None  # the result is still to be reported
    unit.server.run()
    assert unit.updater().cycle().outcome is Outcome.REPORTED
    assert unit.action(action_id)["state"] == "finished"


def test_events_the_ramdisk_spooled_on_recovery_are_sent_once(unit: Unit) -> None:
    """The events endpoint itself is tested with a real unit's token in the server's tests and
    in QEMU; here the sender records what it is given, and fails once."""
    recorder = EventRecorder(serial=SERIAL, spool_dir=unit.layout.logs)
    recorder.start("restore", "a restore without network")
    recorder.finish("restore", Result.SUCCESS, "restored")
    received: list[Event] = []
    failing = True

    def send(batch: Sequence[Event]) -> None:
        if failing:
            raise ServerError("events: cannot reach the server")
        received.extend(batch)

    assert unit.updater(send).cycle().outcome is Outcome.IDLE  # a failed send is no failure
    assert received == []
    failing = False
    unit.updater(send).cycle()
    assert [event.name for event in received] == ["restore", "restore"]
    unit.updater(send).cycle()
    assert len(received) == 2  # acknowledged: never again


def test_the_agent_consents_when_the_server_asks(unit: Unit) -> None:
    action_id = unit.assign("2.0.0", confirmation_required=True)
    result = unit.updater().cycle()
    assert result.outcome is Outcome.CONFIRMED
    assert unit.action(action_id)["state"] == "running"
    assert unit.updater().cycle().outcome is Outcome.RESTORING
