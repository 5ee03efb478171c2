"""Manufacture when things go wrong, and on other disk set-ups, in QEMU on the fast `-kernel`
path (the firmware is not what is under test here; test_manufacture_qemu.py PXE-boots both):
malformed manufData, files that cannot be had, a disk too small, a server down at start, a
network gone mid-way and a download cut mid-way, two disks with RECOVERY on its own (an NVMe
primary), and manufacturing the same unit again."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from initramfs.builder import RamdiskBuild
from lab import Lab
from lab.diskimage import ext4_read
from lab.faults import DroppingProxy
from lab.httpd import HttpServer
from lab.profile import file_spec
from lab.spec import Disk, DiskInterface, Firmware
from tests.provision.qemu_factory import (
    GIB,
    MIB,
    QEMU_COMMANDS,
    RECOVERY_BYTES,
    Factory,
    blank_disk,
    boot_from_disk,
    direct_unit,
    manufacture_direct,
    manufdata,
    partition_table,
    placed,
    recovery_on_its_own_disk,
    sha256_of,
    stored_images,
)

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]


def _line1(factory: Factory) -> dict[str, Any]:
    return copy.deepcopy(manufdata(factory.image, factory.image_id, factory.ramdisk))


def _finished(factory: Factory, serial: str) -> dict[str, dict[str, Any]]:
    events = factory.api(f"units/{serial}/events")["events"]
    return {event["name"]: event for event in events if event["type"] == "finish"}


def sha256_of_blank_disk(path: Path, size: int = 4 * GIB) -> str:
    blank_disk(path, size)
    return sha256_of(path)


def _hook(factory: Factory, name: str, script: str, **fields: Any) -> dict[str, Any]:
    data = script.encode()
    factory.server.put_file(factory.token, f"{name}.sh", data)
    return {"name": name, "url": f"files/{name}.sh",
            "sha256": hashlib.sha256(data).hexdigest()} | fields


def test_malformed_manufdata_fails_with_every_problem_and_no_write(
        lab: Lab, ramdisk: RamdiskBuild, tmp_path: Path) -> None:
    (tmp_path / "http").mkdir()
    (tmp_path / "http" / "manufData.json").write_text(json.dumps({
        "schema": 1, "product": "Not A Name!", "files": [], "variants": [],
        "layout": {"recovery_size_bytes": 0}, "colour": "blue", "_comment": "ignored"}))
    disk = tmp_path / "unit.img"
    blank = sha256_of_blank_disk(disk)
    with HttpServer(tmp_path / "http") as http:
        verdict = manufacture_direct(lab, ramdisk, tmp_path,
                                     mfgurl=f"{http.guest_url}/manufData.json",
                                     serial="KILN-BAD-0001", disks=(Disk(image=disk),))
    assert verdict.result == "failed", verdict.line
    for problem in ("product", "files", "variants", "recovery_size_bytes", "colour"):
        assert problem in verdict.console, problem
    assert "_comment" not in verdict.line
    assert "retrying" not in verdict.console  # a malformed file is not retried
    assert sha256_of(disk) == blank


def test_files_that_cannot_be_had_fail_before_a_disk_is_touched(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, tmp_path: Path) -> None:
    document = _line1(factory)
    document["files"][1]["sha256"] = "3" * 64  # the kernel: not the server's bytes
    document["files"].append(file_spec(ramdisk.kernel, "files/nowhere", "boot/extra", "other"))
    mfgurl = factory.profile("line-missing", document)
    serial = "KILN-FILES-0001"
    disk = tmp_path / "unit.img"
    blank = sha256_of_blank_disk(disk)
    verdict = manufacture_direct(lab, ramdisk, tmp_path, mfgurl=mfgurl, serial=serial,
                                 disks=(Disk(image=disk),))
    assert verdict.result == "failed", verdict.line
    unit = factory.api(f"units/{serial}")
    assert (unit["lifecycle"], unit["status"]) == ("manufacture", "failed")
    assert "2 of 4 file(s)" in unit["failure"]
    assert "files[1] boot/vmlinuz" in unit["failure"] and "3333" in unit["failure"]
    assert "files[3] boot/extra" in unit["failure"] and "404" in unit["failure"]
    finished = _finished(factory, serial)
    assert finished["manufacture/files"]["result"] == "fail"
    assert "manufacture/credentials" not in finished
    assert not unit["credential_escrowed"]
    assert sha256_of(disk) == blank


def test_a_disk_too_small_for_the_variant_fails_validation(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, tmp_path: Path) -> None:
    serial = "KILN-SMALL-0001"
    disk = tmp_path / "unit.img"
    blank = sha256_of_blank_disk(disk, 2 * GIB)
    verdict = manufacture_direct(lab, ramdisk, tmp_path, mfgurl=factory.mfgurl, serial=serial,
                                 disks=(Disk(image=disk),))
    assert verdict.result == "failed", verdict.line
    unit = factory.api(f"units/{serial}")
    assert unit["status"] == "failed" and "disks[0]" in unit["failure"]
    assert "2.1 GB" in unit["failure"]  # what was found, next to what the variant wants
    assert sha256_of(disk) == blank


def test_a_server_down_at_start_a_network_gone_mid_way_and_a_cut_download(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, tmp_path: Path) -> None:
    """The server is down when the unit starts (it waits, saying so); the network goes away
    after RECOVERY is mounted (events stay on RECOVERY and arrive later, none lost); the
    ramdisk's download is cut mid-way (it resumes with Range)."""
    serial = "KILN-FLAKY-0001"
    disk = tmp_path / "unit.img"
    blank_disk(disk)
    document = _line1(factory)
    # A pause after RECOVERY is mounted: the moment the test takes the network away.
    document["hooks"] = [_hook(factory, "pause", "#!/bin/sh\nsleep 4\n",
                               point="after_partition")]
    with DroppingProxy(upstream_port=factory.port, path_part="initrd",
                       drop_after_bytes=8 * MIB) as proxy:
        mfgurl = factory.profile("line-flaky", document, port=proxy.port)
        factory.server.stop()
        try:
            with direct_unit(lab, ramdisk, mfgurl=mfgurl, serial=serial,
                             disks=(Disk(image=disk),)) as vm:
                waiting = vm.wait_for(r"kiln: manufacture: ([^\r\n]*retrying in [^\r\n]*)",
                                      timeout=300)
                factory.server.run()
                # The script is running (fetched already): the network goes while it sleeps.
                vm.wait_for(r"kiln: \+ \S*/hooks/pause/script", timeout=300)
                vm.qmp.execute("set_link", {"name": "net0", "up": False})
                vm.wait_for(r"events stay spooled for later", timeout=300)
                vm.qmp.execute("set_link", {"name": "net0", "up": True})
                verdict = vm.wait_for(r"kiln: manufacture (succeeded|failed): ([^\r\n]*)",
                                      timeout=600)
                assert vm.wait_exit(timeout=300) == 0
                console = vm.console_text()
        finally:
            if factory.server.process is None or factory.server.process.poll() is not None:
                factory.server.run()  # whatever happened, the next test finds it up
        (tmp_path / "console.txt").write_text(console)
        seen = proxy.requests()
        assert proxy.dropped.is_set()
    assert verdict.group(1) == "succeeded", verdict.group(2)
    assert "cannot reach" in waiting.group(1)
    initrd_gets = [r for r in seen if r.method == "GET" and "initrd" in r.path]
    assert initrd_gets[0].range in (None, "bytes=0-")
    resumed = [r.range for r in initrd_gets[1:]]
    assert resumed and resumed[0] is not None and resumed[0] != "bytes=0-", resumed
    assert "resuming at byte" in console
    table = partition_table(disk)
    rec = placed(table, 0, "RECOVERY")
    work = tmp_path / "check"
    work.mkdir()
    assert ext4_read(disk, rec, "/boot/initrd.zst", work=work) == ramdisk.initrd.read_bytes()
    assert factory.api(f"units/{serial}")["status"] == "succeeded"
    # Every event of the run reached the server, those spooled while the link was down too.
    events = factory.api(f"units/{serial}/events")["events"]
    assert len({event["run_id"] for event in events}) == 1
    assert sorted(event["seq"] for event in events) == list(range(len(events)))
    assert _finished(factory, serial)["manufacture/hooks/pause"]["result"] == "success"


def _two_disks(factory: Factory) -> dict[str, Any]:
    document = _line1(factory)
    document["hooks"] = [
        _hook(factory, "mark", '#!/bin/sh\necho "marking $KILN_SERIAL"\n'
                               'echo "$KILN_VARIANT" > "$KILN_RECOVERY/hook-was-here"\n',
              point="after_partition"),
        _hook(factory, "label", "#!/bin/sh\necho printer offline >&2\nexit 4\n",
              point="before_reboot", on_failure="warn")]
    return recovery_on_its_own_disk(document)


def test_two_disks_recovery_on_its_own_and_an_nvme_primary_then_manufactured_again(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, tmp_path: Path) -> None:
    mfgurl = factory.profile("line-two", _two_disks(factory))
    serial = "KILN-TWO-0001"
    primary_image, recovery_image = tmp_path / "nvme.img", tmp_path / "recovery.img"
    blank_disk(primary_image)
    blank_disk(recovery_image, GIB)
    # The NVMe disk comes first on the bus: Kiln picks disks by the spec, not by order.
    disks = (Disk(image=primary_image, interface=DiskInterface.NVME, serial="KILNNVME0001"),
             Disk(image=recovery_image, bootindex=1))
    first = manufacture_direct(lab, ramdisk, tmp_path, mfgurl=mfgurl, serial=serial,
                               disks=disks, name="first")
    assert first.result == "succeeded", first.line
    recovery_table, primary_table = partition_table(recovery_image), partition_table(
        primary_image)
    [recovery] = recovery_table["partitions"]
    assert recovery["size"] == RECOVERY_BYTES // 512 and recovery.get("bootable") is True
    [primary] = primary_table["partitions"]
    assert primary["node"] and primary["size"] * 512 > 3 * GIB
    work = tmp_path / "check"
    work.mkdir()
    rec = placed(recovery_table, 0, "RECOVERY")
    assert len(stored_images(recovery_image, rec, work=work)) == 1
    identity = json.loads(ext4_read(recovery_image, rec, "/state/identity.json", work=work))
    assert identity["serial"] == serial
    # The hooks ran in the unit: one wrote to RECOVERY, one failed with on_failure warn.
    assert ext4_read(recovery_image, rec, "/hook-was-here", work=work) == b"qemu-lab\n"
    assert f"hook mark: marking {serial}" in first.console
    finished = _finished(factory, serial)
    assert finished["manufacture/hooks/mark"]["result"] == "success"
    assert finished["manufacture/hooks/label"]["result"] == "warn"
    assert "exited with status 4" in finished["manufacture/hooks/label"]["message"]
    # SeaBIOS boots the RECOVERY disk's MBR → GRUB → the Kiln ramdisk, which restores.
    assert boot_from_disk(lab, disks, tmp_path, firmware=Firmware.BIOS) == "restore"

    second = manufacture_direct(lab, ramdisk, tmp_path, mfgurl=mfgurl, serial=serial,
                                disks=disks, name="second")
    assert second.result == "succeeded", second.line
    assert partition_table(recovery_image)["id"] != recovery_table["id"]  # a new table
    identity_again = json.loads(ext4_read(recovery_image, rec, "/state/identity.json",
                                          work=work))
    assert identity_again["run_id"] != identity["run_id"]
    events = factory.api(f"units/{serial}/events")["events"]
    runs = {event["run_id"] for event in events
            if event["name"] == "manufacture" and event.get("result") == "success"}
    assert len(runs) == 2
    assert factory.api(f"units/{serial}")["status"] == "succeeded"
