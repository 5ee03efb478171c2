"""What an erase request destroys, found from RECOVERY's `state/disks.json`, and what is put
back afterwards. The methods themselves are `erase/`'s.

Rules:
- The disk that holds RECOVERY is never erased as a device: its PRIMARY and DATA partitions
  are erased as partitions (RECOVERY, and the ESP beside it, stay). Every other disk
  manufacture partitioned (PRIMARY and DATA on their own disk) is erased as a device, after a
  check that it is the size the plan was made for.
- Disks are found by the PARTUUIDs manufacture wrote; a device-level erase destroys those, so
  the journal (`state/erase-journal.json`, written before the first destructive step) keeps
  each disk's name, serial and size, and an erase that a power cut ended finds them again by
  serial. The erase request stays until the erase is complete: the next boot erases again.
- Afterwards a device-level erased disk gets its partition table back exactly as planned
  (same PARTUUIDs and file-system UUIDs, empty file systems); on the RECOVERY disk DATA gets
  a fresh, empty file system. PRIMARY is left without `/boot.normal`, so the next boot
  restores a fresh OS.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erase.capabilities import Scope
from erase.methods import Region
from kiln.blockdev import Disk, read_disks
from kiln.errors import KilnError
from kiln.fsutil import atomic_write_json, fsync_directory
from recovery.layout import RecoveryLayout, Request, StateFile
from recovery.partitioning import apply_plan, make_filesystem
from recovery.partitions import PartitionPlan, PartitionRole
from recovery.restore import load_disks


class ErasePlanError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class EraseTarget:
    plan: PartitionPlan
    disk: Disk
    scope: Scope
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class Devices:
    """Where the kernel shows disks and partitions; tests point it at a fixture tree."""

    root: Path = Path("/")

    def by_partuuid(self, uuid: str) -> Path | None:
        link = self.root / "dev/disk/by-partuuid" / uuid.lower()
        return link.resolve() if link.exists() else None

    def disk_of(self, partition: Path) -> str:
        return (self.root / "sys/class/block" / partition.name).resolve().parent.name

    def disks(self) -> tuple[Disk, ...]:
        return read_disks(self.root)


class EraseJournal:
    def __init__(self, layout: RecoveryLayout):
        self.path = layout.state_file(StateFile.ERASE_JOURNAL)

    def previous(self) -> dict[str, Any] | None:
        try:
            found = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def write(self, *, run_id: str, targets: tuple[EraseTarget, ...],
              interrupted: list[str]) -> None:
        atomic_write_json(self.path, {
            "run_id": run_id, "started_ns": time.time_ns(), "interrupted_runs": interrupted,
            "disks": [{"disk": target.plan.disk, "name": target.disk.name,
                       "serial": target.disk.serial, "size_bytes": target.disk.size_bytes}
                      for target in targets]})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        fsync_directory(self.path.parent)


def _find_disk(plan: PartitionPlan, devices: Devices,
               journal: dict[str, Any] | None) -> Disk:
    disks = {disk.name: disk for disk in devices.disks()}
    for partition in plan.partitions:
        node = devices.by_partuuid(partition.partition_uuid)
        if node is not None and (name := devices.disk_of(node)) in disks:
            return disks[name]
    for known in (journal or {}).get("disks", []):
        if known.get("disk") != plan.disk or not known.get("serial"):
            continue
        for disk in disks.values():
            if disk.serial == known["serial"] and disk.size_bytes == known.get("size_bytes"):
                return disk
    raise ErasePlanError(f"cannot find the disk manufacture partitioned as {plan.disk}: none of "
                         "its partitions is there, and no disk has the serial the erase "
                         "journal recorded")


def plan_erase(layout: RecoveryLayout, *, devices: Devices | None = None,
               journal: dict[str, Any] | None = None) -> tuple[EraseTarget, ...]:
    devices = devices or Devices()
    targets: list[EraseTarget] = []
    for plan in load_disks(layout):
        disk = _find_disk(plan, devices, journal)
        if plan.partition(PartitionRole.RECOVERY) is not None:
            regions = []
            for role in (PartitionRole.PRIMARY, PartitionRole.DATA):
                partition = plan.partition(role)
                if partition is None:
                    continue
                node = devices.by_partuuid(partition.partition_uuid)
                if node is None or devices.disk_of(node) != disk.name:
                    raise ErasePlanError(f"the {role} partition (PARTUUID "
                                         f"{partition.partition_uuid}) is not on {disk.name}")
                regions.append(Region(node=node, size_bytes=plan.size_bytes(partition),
                                      name=str(role).upper()))
            targets.append(EraseTarget(plan=plan, disk=disk, scope=Scope.PARTITION,
                                       regions=tuple(regions)))
            continue
        planned_bytes = plan.disk_sectors * plan.sector_size
        if disk.size_bytes != planned_bytes:
            raise ErasePlanError(f"{disk.path} has {disk.size_bytes} bytes; manufacture "
                                 f"partitioned a disk of {planned_bytes}: not erasing it")
        targets.append(EraseTarget(plan=plan, disk=disk, scope=Scope.DEVICE, regions=(
            Region(node=devices.root / "dev" / disk.name, size_bytes=disk.size_bytes,
                   name=f"disk {disk.name}"),)))
    recovery_disks = {t.disk.name for t in targets if t.scope is Scope.PARTITION}
    if any(t.scope is Scope.DEVICE and t.disk.name in recovery_disks for t in targets):
        raise ErasePlanError("a device-level erase would reach the disk that holds RECOVERY")
    return tuple(targets)


def put_back(target: EraseTarget, *, devices: Devices | None = None) -> str:
    """Empty file systems where the OS expects them (see the module's rules)."""
    devices = devices or Devices()
    if target.scope is Scope.DEVICE:
        apply_plan(target.plan, devices.root / "dev" / target.disk.name)
        return f"{target.disk.name}: partition table and empty file systems as planned"
    data = target.plan.partition(PartitionRole.DATA)
    if data is None:
        return f"{target.disk.name}: no DATA partition"
    node = devices.by_partuuid(data.partition_uuid)
    if node is None:
        raise ErasePlanError(f"the DATA partition (PARTUUID {data.partition_uuid}) is gone")
    make_filesystem(data, node, device=node)
    return f"{node}: a fresh, empty DATA file system"


def finish_requests(layout: RecoveryLayout) -> None:
    """The erase is done: its request goes, and a restore request with it (the next boot
    restores anyway)."""
    for request in (Request.ERASE, Request.RESTORE):
        layout.request_file(request).unlink(missing_ok=True)
    if layout.requests.is_dir():
        fsync_directory(layout.requests)
