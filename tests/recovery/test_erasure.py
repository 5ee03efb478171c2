"""What an erase request destroys: the rules of `recovery.erasure` over a made-up kernel view
(the QEMU tests in tests/erase/ run them against real disks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from erase.capabilities import Scope
from kiln.blockdev import Disk, DiskTransport
from kiln.contract import to_json
from kiln.manufdata import GIB, MIB, DiskLayout, Firmware, RecoveryDisk
from recovery.erasure import Devices, EraseJournal, ErasePlanError, finish_requests, plan_erase
from recovery.layout import RecoveryLayout, Request, StateFile
from recovery.partitions import PartitionPlan, TargetDisk, node_name, plan_layout
from recovery.requests import request_erase, request_restore
from recovery.restore import save_disks
from tests.recovery.loopdisk import uuids


class KernelView(Devices):
    """Disks by name; partitions present unless their disk is `wiped`."""

    def __init__(self, disks: dict[str, int], plans: tuple[PartitionPlan, ...],
                 wiped: frozenset[str] = frozenset()):
        super().__init__(Path("/"))
        self.sizes, self.wiped = disks, wiped
        self.partitions = {p.partition_uuid.lower(): Path("/dev") / node_name(
            Path(plan.disk).name, p.number) for plan in plans for p in plan.partitions}

    def by_partuuid(self, uuid: str) -> Path | None:
        node = self.partitions.get(uuid.lower())
        return None if node is None or self.disk_of(node) in self.wiped else node

    def disk_of(self, partition: Path) -> str:
        return next(name for name in self.sizes if partition.name.startswith(name))

    def disks(self) -> tuple[Disk, ...]:
        return tuple(Disk(name=name, path=f"/dev/{name}", sysfs_path="", size_bytes=size,
                          model="M", vendor="", serial=f"SN-{name}", transport=DiskTransport.NVME,
                          rotational=False, removable=False, read_only=False)
                     for name, size in self.sizes.items())


def _plans(separate: bool) -> tuple[PartitionPlan, ...]:
    layout = DiskLayout(recovery_size_bytes=300 * MIB, esp_size_bytes=64 * MIB,
                        data_size_bytes=128 * MIB,
                        recovery_disk=RecoveryDisk.SEPARATE if separate else RecoveryDisk.SAME)
    return plan_layout(layout, firmware=Firmware.UEFI, new_uuid=uuids(7),
                       primary=TargetDisk(name="/dev/nvme0n1", size_bytes=4 * GIB),
                       recovery=TargetDisk(name="/dev/sda", size_bytes=GIB) if separate
                       else None)


def _layout(tmp_path: Path, plans: tuple[PartitionPlan, ...]) -> RecoveryLayout:
    layout = RecoveryLayout(tmp_path)
    layout.state.mkdir()
    save_disks(layout, plans)
    return layout


def test_on_the_recovery_disk_only_primary_and_data_are_erased(tmp_path: Path) -> None:
    plans = _plans(separate=False)
    layout = _layout(tmp_path, plans)
    [target] = plan_erase(layout, devices=KernelView({"nvme0n1": 4 * GIB}, plans))
    assert target.scope is Scope.PARTITION
    assert [(r.name, r.node.name) for r in target.regions] == [
        ("PRIMARY", "nvme0n1p3"), ("DATA", "nvme0n1p4")]
    assert [r.size_bytes for r in target.regions][1] == 128 * MIB


def test_a_disk_without_recovery_is_erased_whole_and_found_again_by_serial(
        tmp_path: Path) -> None:
    plans = _plans(separate=True)
    layout = _layout(tmp_path, plans)
    sizes = {"nvme0n1": 4 * GIB, "sda": GIB}
    targets = plan_erase(layout, devices=KernelView(sizes, plans))
    assert [(t.disk.name, t.scope) for t in targets] == [
        ("nvme0n1", Scope.DEVICE), ("sda", Scope.PARTITION)]
    assert [r.name for r in targets[1].regions] == []  # RECOVERY's disk holds neither
    journal = EraseJournal(layout)
    journal.write(run_id="r1", targets=targets, interrupted=[])
    # A power cut after the device erase: the NVMe disk has no partitions left.
    wiped = KernelView(sizes, plans, wiped=frozenset({"nvme0n1"}))
    with pytest.raises(ErasePlanError, match=r"cannot find the disk .* /dev/nvme0n1"):
        plan_erase(layout, devices=wiped)
    again = plan_erase(layout, devices=wiped, journal=journal.previous())
    assert again[0].disk.serial == "SN-nvme0n1" and again[0].scope is Scope.DEVICE
    journal.remove()
    assert journal.previous() is None


def test_a_disk_of_another_size_is_not_erased(tmp_path: Path) -> None:
    plans = _plans(separate=True)
    layout = _layout(tmp_path, plans)
    with pytest.raises(ErasePlanError, match="manufacture partitioned a disk of"):
        plan_erase(layout, devices=KernelView({"nvme0n1": 8 * GIB, "sda": GIB}, plans))


def test_a_finished_erase_clears_both_requests(tmp_path: Path) -> None:
    layout = _layout(tmp_path, _plans(separate=False))
    request_erase(layout)
    request_restore(layout, keep_data=True)
    finish_requests(layout)
    assert not layout.requested(Request.ERASE) and not layout.requested(Request.RESTORE)
    assert json.loads(layout.state_file(StateFile.DISKS).read_text())[0]["disk"] == \
        to_json(_plans(separate=False)[0])["disk"]
