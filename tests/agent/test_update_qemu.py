"""Field updates in QEMU, end to end: real units, the real ramdisk, the real agent, a real
server and rollouts.

- Unit 2, made with image 1.0.0, is enrolled in a rollout of 2.0.0: its agent (in the OS)
  downloads 2.0.0 into RECOVERY and asks for a restore on trial; the ramdisk restores it,
  keeping DATA; the agent in 2.0.0 reports success and the rollout finishes.
- Unit 1, made with 2.0.0, is the first wave of a rollout of 3.0.0, an image that cannot
  boot: its one boot goes unconfirmed, the ramdisk gives it up and restores 2.0.0 again,
  DATA kept; the agent reports the failure with its reason, and the rollout pauses at its
  error threshold before its second wave (unit 2) starts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from initramfs.builder import RamdiskBuild
from kiln.image.signing import SigningKey
from lab import Lab
from lab.profile import MIB, LabUnit, lab_manufdata
from lab.spec import BootDevice, Disk, Firmware, Nic, VmSpec
from tests.agent.agentos import AGENT_MARK, make_agent_os_image, make_broken_os_image
from tests.provision.qemu_factory import QEMU_COMMANDS, Factory, blank_disk, manufacture_direct

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS, "cpio")]
TENANT = "default"
RESTORED = r"kiln: restore (succeeded|failed): [^\r\n]*"
AGENT_DONE = AGENT_MARK + r" agent exited \d+"
REBOOTING = r"agent: restoring: [^\r\n]*: rebooting to restore"


@dataclass(frozen=True)
class Fleet:
    factory: Factory
    lab: Lab
    ramdisk: RamdiskBuild
    work: Path
    images: dict[str, Path]  # by version
    modules: dict[str, int]  # by version

    def api(self, method: str, path: str, **options: Any) -> Any:
        answer = requests.request(
            method, f"{self.factory.server.url}/api/v1/tenants/{TENANT}{path}", timeout=30,
            headers={"Authorization": f"Bearer {self.factory.token}"}, **options)
        assert answer.ok, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def boot(self, disk: Path, *, name: str, until: str) -> tuple[str, str]:
        """Boot the unit's disk with a NIC until the guest stops; (decision, `until` line)."""
        spec = VmSpec(firmware=Firmware.BIOS, boot=BootDevice.DISK, disks=(Disk(image=disk),),
                      nics=(Nic(),), memory_mb=1024, no_reboot=True)
        with self.lab.vm(spec) as vm:
            decision = vm.wait_for(r"kiln: decision: ([a-z]+)", timeout=300)
            found = vm.wait_for(until, timeout=900)
            vm.wait_exit(timeout=300)
            (self.work / f"{name}.txt").write_text(vm.console_text())
        assert "Kernel panic" not in vm.console_text()
        return decision.group(1), found.group(0)

    def unit(self, serial: str, *, factory_version: str) -> Path:
        image = self.images[factory_version]
        image_id = self.factory.server.push_image(self.factory.token, image)
        mfgurl = self.factory.profile(f"upd-{serial.lower()}", lab_manufdata(
            image=image, image_id=image_id, kernel=self.ramdisk.kernel,
            initrd=self.ramdisk.initrd, unit=LabUnit(data_bytes=256 * MIB)))
        disk = self.work / f"{serial}.img"
        blank_disk(disk)
        made = manufacture_direct(self.lab, self.ramdisk, self.work, mfgurl=mfgurl,
                                  serial=serial, disks=(Disk(image=disk),),
                                  name=f"{serial}-manufacture")
        assert made.result == "succeeded", made.line
        return disk


@pytest.fixture(scope="module")
def fleet(lab: Lab, ramdisk: RamdiskBuild, factory: Factory, signing_key: SigningKey,
          tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Images 1.0.0 and 2.0.0 (the agent OS) and 3.0.0 (cannot boot) on the server."""
    work = tmp_path_factory.mktemp("updates")
    images = {version: make_agent_os_image(work, ramdisk=ramdisk, key=signing_key,
                                           version=version) for version in ("1.0.0", "2.0.0")}
    images["3.0.0"] = make_broken_os_image(work, key=signing_key, version="3.0.0")
    for image in images.values():
        factory.server.push_image(factory.token, image)
    found = Fleet(factory=factory, lab=lab, ramdisk=ramdisk, work=work, images=images,
                  modules={})
    releases = {module["version"]: module["id"] for module in
                found.api("GET", "/softwaremodules")["softwaremodules"]}
    return dataclasses.replace(found, modules={version: releases[f"{version}+0"]
                                               for version in images})


def rollout(fleet: Fleet, *, version: str, serials: list[str], **fields: Any) -> int:
    made = fleet.api("POST", "/rollouts", json={
        "name": f"to {version}", "module_id": fleet.modules[version],
        "target_filter": {"controller_ids": serials}, **fields})
    fleet.api("POST", f"/rollouts/{made['id']}/start")
    rollout_id: int = made["id"]
    return rollout_id


def test_a_rollout_updates_a_unit_and_a_bad_image_falls_back_and_pauses_the_next(
        fleet: Fleet) -> None:
    second = fleet.unit("KILN-UPD-2", factory_version="1.0.0")
    first_rollout = rollout(fleet, version="2.0.0", serials=["KILN-UPD-2"],
                            waves=[{"percent": 100}])
    decision, line = fleet.boot(second, name="u2-restore", until=RESTORED)
    assert decision == "restore" and "restore succeeded: demo 1.0.0" in line, line
    decision, line = fleet.boot(second, name="u2-os-1", until=REBOOTING)
    assert decision == "normal"
    assert "demo 2.0.0 (build 0)" in line, line
    console = (fleet.work / "u2-os-1.txt").read_text()
    assert f"{AGENT_MARK} up version 1.0.0 data none" in console
    decision, line = fleet.boot(second, name="u2-update", until=RESTORED)
    assert decision == "restore" and "restore succeeded: demo 2.0.0" in line, line
    decision, line = fleet.boot(second, name="u2-os-2", until=AGENT_DONE)
    console = (fleet.work / "u2-os-2.txt").read_text()
    assert f"{AGENT_MARK} up version 2.0.0 data keep me" in console  # DATA kept
    assert "agent: reported: demo 2.0.0 (build 0) is installed and running" in console
    done = fleet.api("GET", f"/rollouts/{first_rollout}")
    assert done["state"] == "finished", done
    target = fleet.api("GET", "/targets/KILN-UPD-2")
    assert target["installed_module_id"] == fleet.modules["2.0.0"]
    assert target["attributes"]["installed"] == "demo 2.0.0 (build 0)"
    (update,) = [a for a in target["actions"] if a["rollout_id"] == first_rollout]
    history = [step["state"] for step in fleet.api("GET", f"/actions/{update['id']}")["history"]]
    assert history == ["running", "download", "downloaded", "running", "finished"]

    first = fleet.unit("KILN-UPD-1", factory_version="2.0.0")
    bad_rollout = rollout(fleet, version="3.0.0", serials=["KILN-UPD-1", "KILN-UPD-2"],
                          waves=[{"count": 1}, {"percent": 100}], error_percent=1)
    fleet.boot(first, name="u1-restore", until=RESTORED)
    decision, line = fleet.boot(first, name="u1-os-2", until=REBOOTING)
    assert "demo 3.0.0 (build 0)" in line, line
    decision, line = fleet.boot(first, name="u1-update", until=RESTORED)
    assert "restore succeeded: demo 3.0.0" in line, line
    decision, line = fleet.boot(first, name="u1-broken", until=AGENT_MARK + r" up [^\r\n]*")
    assert decision == "normal" and line.endswith("version 3.0.0 cannot boot"), line
    decision, line = fleet.boot(first, name="u1-fallback", until=RESTORED)
    fallback = (fleet.work / "u1-fallback.txt").read_text()
    assert decision == "restore", fallback
    assert "the OS did not confirm its last 1 boots" in fallback
    assert "restore succeeded: demo 2.0.0" in line, line
    decision, line = fleet.boot(first, name="u1-os-back", until=AGENT_DONE)
    console = (fleet.work / "u1-os-back.txt").read_text()
    assert f"{AGENT_MARK} up version 2.0.0 data keep me" in console
    assert "agent: failed: demo 3.0.0 (build 0) did not come up: the update did not confirm " \
        "its first boot" in console, console
    paused = fleet.api("GET", f"/rollouts/{bad_rollout}")
    assert paused["state"] == "paused", paused
    assert paused["reason"] == "wave 1: 1 of 1 failed (error threshold 1%)"
    assert paused["waves"][1]["started_ns"] is None  # unit 2 never got 3.0.0
    (failure,) = fleet.api("GET", f"/rollouts/{bad_rollout}/failures")["failures"]
    assert failure["controller_id"] == "KILN-UPD-1"
    assert re.search(r"the unit runs demo 2\.0\.0 \(build 0\) again", " ".join(
        failure["messages"]))
    assert fleet.api("GET", "/targets/KILN-UPD-1")["installed_module_id"] == \
        fleet.modules["2.0.0"]
