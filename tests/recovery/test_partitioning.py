"""Applying a plan: real tables and file systems on loop devices, checked from outside.

The loop tests (marker `loop`) need root: they attach a sparse file with
`losetup --find --show --partscan` and always detach it. The wait and the read-back are also
tested without root, against a fake sysfs and captured `sfdisk -J` output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kiln.manufdata import GIB, MIB, DiskLayout, Firmware
from kiln.process import run
from recovery.partitioning import (
    PartitioningError,
    SysBlock,
    _differences,
    _wait_for_nodes,
    apply_plan,
)
from recovery.partitions import (
    ESP_TYPE_GUID,
    LINUX_FS_TYPE_GUID,
    PartitionPlan,
    PartitionRole,
    TargetDisk,
    plan_layout,
)
from tests.recovery.loopdisk import LAYOUT, TOOLS, AttachLoop, plan_for, uuids

R = PartitionRole


def sfdisk_json(device: Path) -> dict[str, object]:
    table: dict[str, object] = json.loads(run(["sfdisk", "--json", device]).text)[
        "partitiontable"]
    return table


def probe(node: Path) -> dict[str, str]:
    text = run(["blkid", "--probe", "--output", "export", node], success_codes=(0, 2)).text
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def check_from_outside(plan: PartitionPlan, device: Path) -> None:
    table = sfdisk_json(device)
    partitions = table["partitions"]
    assert isinstance(partitions, list) and len(partitions) == len(plan.partitions)
    for planned, found in zip(plan.partitions, partitions, strict=True):
        assert (found["start"], found["size"]) == (planned.start, planned.sectors)
        info = probe(Path(found["node"]))
        assert info["TYPE"] == planned.filesystem.value
        assert info["LABEL"] == planned.label
        assert info["UUID"].lower() == planned.filesystem_uuid.lower()
        assert info["PART_ENTRY_UUID"] == planned.partition_uuid
        assert int(info["PART_ENTRY_OFFSET"]) * 512 == planned.start * plan.sector_size


@pytest.mark.loop
@pytest.mark.allow_commands(*TOOLS)
def test_uefi_plan_on_a_loop_device(attach_loop: AttachLoop) -> None:
    device = attach_loop()
    plan = plan_for(device, Firmware.UEFI)
    applied = apply_plan(plan, device)

    assert [role for role, _ in applied.nodes] == [R.ESP, R.RECOVERY, R.PRIMARY, R.DATA]
    assert applied.node(R.ESP) == Path(f"{device}p1")
    assert applied.node(R.DATA) == Path(f"{device}p4")
    table = sfdisk_json(device)
    assert table["label"] == "gpt"
    assert str(table["id"]).lower() == plan.disk_id
    partitions = table["partitions"]
    assert isinstance(partitions, list)
    assert [p["type"] for p in partitions] == [ESP_TYPE_GUID] + [LINUX_FS_TYPE_GUID] * 3
    assert [p["name"] for p in partitions] == ["KILN-ESP", "RECOVERY", "PRIMARY", "DATA"]
    assert probe(applied.node(R.ESP))["VERSION"] == "FAT32"
    check_from_outside(plan, device)


@pytest.mark.loop
@pytest.mark.allow_commands(*TOOLS)
def test_bios_plan_on_a_loop_device(attach_loop: AttachLoop) -> None:
    device = attach_loop()
    plan = plan_for(device, Firmware.BIOS)
    applied = apply_plan(plan, device)

    assert [role for role, _ in applied.nodes] == [R.RECOVERY, R.PRIMARY, R.DATA]
    table = sfdisk_json(device)
    assert table["label"] == "dos"
    assert table["id"] == f"0x{plan.disk_id}"
    partitions = table["partitions"]
    assert isinstance(partitions, list)
    assert [p["type"] for p in partitions] == ["83", "83", "83"]
    assert [bool(p.get("bootable")) for p in partitions] == [True, False, False]
    assert partitions[0]["start"] == 2048  # the BIOS gap before RECOVERY
    check_from_outside(plan, device)


@pytest.mark.loop
@pytest.mark.allow_commands(*TOOLS)
def test_re_manufacture_replaces_the_old_layout(attach_loop: AttachLoop) -> None:
    device = attach_loop()
    apply_plan(plan_for(device, Firmware.UEFI, seed=1), device)
    # BIOS over GPT: no GPT header (primary or backup) may survive to confuse a reader.
    bios = plan_for(device, Firmware.BIOS, seed=100,
                    layout=DiskLayout(recovery_size_bytes=400 * MIB))
    apply_plan(bios, device)
    assert probe(device)["PTTYPE"] == "dos"
    check_from_outside(bios, device)
    # And back, with different sizes, so every old partition node is stale.
    uefi = plan_for(device, Firmware.UEFI, seed=200)
    applied = apply_plan(uefi, device)
    assert probe(device)["PTTYPE"] == "gpt"
    check_from_outside(uefi, device)
    assert len(applied.nodes) == 4


@pytest.mark.loop
@pytest.mark.allow_commands(*TOOLS)
def test_4k_sectors(attach_loop: AttachLoop) -> None:
    device = attach_loop(sector_size=4096)
    plan = plan_for(device, Firmware.UEFI, sector_size=4096)
    assert plan.partitions[0].start == 256
    apply_plan(plan, device)
    check_from_outside(plan, device)


@pytest.mark.loop
@pytest.mark.allow_commands("losetup")
def test_a_plan_for_another_disk_is_refused_before_writing(attach_loop: AttachLoop) -> None:
    device = attach_loop()
    (plan,) = plan_layout(LAYOUT, firmware=Firmware.UEFI, new_uuid=uuids(1),
                          primary=TargetDisk(name="/dev/sdz", size_bytes=4 * GIB))
    with pytest.raises(PartitioningError, match=rf"{device}: the plan was made for /dev/sdz "
                                                r"with 8388608 sectors.*nothing was written"):
        apply_plan(plan, device)


# Without root: a missing device, the wait and the read-back against fakes.

def test_a_missing_device_fails_naming_it_and_the_step(tmp_path: Path) -> None:
    plan = plan_for(Path("/dev/sda"), Firmware.UEFI)
    missing = tmp_path / "no-such-disk"
    with pytest.raises(PartitioningError, match=rf"{missing}: opening the device failed"):
        apply_plan(plan, missing)
    assert not missing.exists()


def fake_sysfs(tmp_path: Path, plan: PartitionPlan, *, disk: str = "sda",
               shift: int = 0, nodes: bool = True) -> SysBlock:
    sysfs = SysBlock(sys_class_block=tmp_path / "sys", dev=tmp_path / "dev")
    sysfs.dev.mkdir(parents=True, exist_ok=True)
    for partition in plan.partitions:
        entry = sysfs.sys_class_block / disk / f"{disk}{partition.number}"
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "partition").write_text(f"{partition.number}\n")
        (entry / "start").write_text(f"{partition.start + shift}\n")
        (entry / "size").write_text(f"{partition.sectors}\n")
        if nodes:
            (sysfs.dev / f"{disk}{partition.number}").touch()
    return sysfs


def test_wait_returns_the_nodes_once_the_kernel_shows_the_plan(tmp_path: Path) -> None:
    plan = plan_for(Path("/dev/sda"), Firmware.BIOS)
    sysfs = fake_sysfs(tmp_path, plan)
    nodes = _wait_for_nodes(plan, Path("/dev/sda"), name="sda", sysfs=sysfs, timeout=1)
    assert nodes == [sysfs.dev / "sda1", sysfs.dev / "sda2", sysfs.dev / "sda3"]


def test_wait_does_not_take_stale_partitions_or_missing_nodes(tmp_path: Path) -> None:
    plan = plan_for(Path("/dev/sda"), Firmware.BIOS)
    sysfs = fake_sysfs(tmp_path, plan, shift=2048)
    with pytest.raises(PartitioningError, match=r"/dev/sda: partitions did not appear within "
                                                r"0.2 s: sda1: kernel shows start 4096"):
        _wait_for_nodes(plan, Path("/dev/sda"), name="sda", sysfs=sysfs, timeout=0.2)
    sysfs = fake_sysfs(tmp_path / "again", plan, nodes=False)
    with pytest.raises(PartitioningError, match=r"sda3: no .*/dev/sda3 yet"):
        _wait_for_nodes(plan, Path("/dev/sda"), name="sda", sysfs=sysfs, timeout=0.1)


def test_read_back_names_every_difference() -> None:
    plan = plan_for(Path("/dev/vda"), Firmware.BIOS)
    nodes = [Path(f"/dev/vda{p.number}") for p in plan.partitions]
    table = {"label": "dos", "id": f"0x{plan.disk_id}", "partitions": [
        {"node": os.fspath(node), "start": p.start, "size": p.sectors, "type": "83",
         "bootable": p.bootable} for p, node in zip(plan.partitions, nodes, strict=True)]}
    probes = [{"TYPE": p.filesystem.value, "LABEL": p.label, "UUID": p.filesystem_uuid,
               "PART_ENTRY_UUID": p.partition_uuid} for p in plan.partitions]
    assert list(_differences(plan, table=table, probes=probes, nodes=nodes)) == []

    table["partitions"][0]["bootable"] = False  # type: ignore[index]
    probes[2]["LABEL"] = "OLD"
    assert list(_differences(plan, table=table, probes=probes, nodes=nodes)) == [
        "partition 1 (recovery): bootable is False, expected True",
        "partition 3 (data) /dev/vda3: label is 'OLD', expected 'DATA'",
    ]
    table["label"] = "gpt"
    table["partitions"] = []
    assert list(_differences(plan, table=table, probes=probes, nodes=nodes)) == [
        "table: label is 'gpt', expected 'dos'", "0 partitions, expected 3"]
