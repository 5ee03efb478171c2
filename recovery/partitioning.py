"""Apply a `PartitionPlan` to a block device: table, partitions, file systems, checked.

`apply_plan` is destructive and runs in this order, each step naming the device when it fails
(`PartitioningError`):

1. **Check** the device against the plan (size in sectors, logical sector size) before
   anything is written: a plan made for another disk is refused.
2. **Wipe** the signatures of the partitions the kernel knows now, then of the whole disk
   (`wipefs -a`), so no old file system or table is found again later.
3. **Write** the table and partitions with pyparted at the plan's exact sectors, with GPT
   partition names and the ESP flag (the ESP type GUID) or the MBR boot flag. libparted 3.5
   (Debian bookworm) cannot set GUIDs, so `sfdisk` sets the disk id and each GPT partition's
   unique GUID before the kernel is told.
4. **Tell the kernel** (libparted's BLKPG calls) and **wait** for every partition: its
   /sys/class/block entry must show the plan's start and size (a node left from the previous
   table does not count) and its /dev node must exist. `udevadm settle` runs first when udevd
   is running; the wait never depends on udevd, since devtmpfs makes the nodes.
5. **Make file systems**: `mkfs.vfat -F 32` for the ESP, `mkfs.ext4` for the rest, with the
   plan's labels and UUIDs.
6. **Read back** with `sfdisk -J` (table) and `blkid -p` (file systems, probed from the
   device: `lsblk` only knows what udev's database holds) and compare with the plan; any
   difference is an error listing every field that differs.

Every program runs through `kiln.process.run` with an argv list, except the `udevadm settle`
libparted itself starts (with system(3)) when it commits a table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import parted

from kiln.errors import KilnError
from kiln.process import CommandError, run
from recovery.partitions import (
    Filesystem,
    PartitionPlan,
    PartitionRole,
    PlannedPartition,
    TableType,
    node_name,
)

KERNEL_SECTOR = 512  # /sys/class/block start and size are in these units
UDEV_CONTROL = Path("/run/udev/control")
DEFAULT_NODE_TIMEOUT = 30.0
_POLL_SECONDS = 0.05
_SFDISK_LABELS = {TableType.GPT: "gpt", TableType.MSDOS: "dos"}


class PartitioningError(KilnError):
    """Applying a plan to a device failed; the message names the device and the step."""


@dataclass(frozen=True, kw_only=True)
class AppliedDisk:
    """A disk partitioned and formatted as its plan says, with each partition's node."""

    device: Path
    plan: PartitionPlan
    nodes: tuple[tuple[PartitionRole, Path], ...]  # in partition order

    def node(self, role: PartitionRole) -> Path:
        for have, path in self.nodes:
            if have is role:
                return path
        raise KeyError(f"{self.device} has no {role} partition")


@dataclass(frozen=True, kw_only=True)
class SysBlock:
    """Where the kernel publishes block devices; tests may point it elsewhere."""

    sys_class_block: Path = Path("/sys/class/block")
    dev: Path = Path("/dev")


def apply_plan(plan: PartitionPlan, device: Path, *,
               node_timeout: float = DEFAULT_NODE_TIMEOUT,
               sysfs: SysBlock | None = None) -> AppliedDisk:
    """Partition `device` as `plan` says, make its file systems and verify the result."""
    sysfs = sysfs or SysBlock()
    name = Path(os.path.realpath(device)).name
    _check_device(plan, device)
    _wipe(device, name=name, sysfs=sysfs)
    _write_table(plan, device)
    _set_identifiers(plan, device)
    _tell_kernel(plan, device)
    nodes = _wait_for_nodes(plan, device, name=name, sysfs=sysfs, timeout=node_timeout)
    for partition, node in zip(plan.partitions, nodes, strict=True):
        make_filesystem(partition, node, device=device)
    _settle(device)
    verify(plan, device, nodes=nodes)
    return AppliedDisk(device=device, plan=plan, nodes=tuple(
        (p.role, node) for p, node in zip(plan.partitions, nodes, strict=True)))


def _step(device: Path, *, step: str, error: Exception) -> PartitioningError:
    return PartitioningError(f"{device}: {step} failed: {error}")


def _check_device(plan: PartitionPlan, device: Path) -> None:
    try:
        found = _fresh_device(device)
        sectors, sector_size = found.length, found.sectorSize
    except Exception as e:
        raise _step(device, step="opening the device", error=e) from e
    if (sectors, sector_size) != (plan.disk_sectors, plan.sector_size):
        raise PartitioningError(
            f"{device}: the plan was made for {plan.disk} with {plan.disk_sectors} sectors of "
            f"{plan.sector_size} bytes; this device has {sectors} sectors of {sector_size} "
            "bytes: nothing was written")


def _fresh_device(device: Path) -> Any:
    """libparted's device for `device`, read now: libparted caches devices by path, and a
    cached one keeps the size, sector size and table of the disk it saw first (a loop device
    re-attached to another file, a disk re-partitioned by another tool)."""
    parted.getDevice(os.fspath(device)).removeFromCache()
    return parted.getDevice(os.fspath(device))


def _partition_names(name: str, sysfs: SysBlock) -> Iterator[str]:
    base = sysfs.sys_class_block / name
    if base.is_dir():
        for entry in sorted(base.iterdir()):
            if (entry / "partition").is_file():
                yield entry.name


def _wipe(device: Path, *, name: str, sysfs: SysBlock) -> None:
    try:
        for part in _partition_names(name, sysfs):
            node = sysfs.dev / part
            if node.exists():
                run(["wipefs", "--all", "--quiet", node])
        run(["wipefs", "--all", "--quiet", device])
    except CommandError as e:
        raise _step(device, step="wiping old signatures", error=e) from e


def _write_table(plan: PartitionPlan, device: Path) -> None:
    try:
        target = _fresh_device(device)
        disk = parted.freshDisk(target, plan.table.value)
        for planned in plan.partitions:
            geometry = parted.Geometry(device=target, start=planned.start, end=planned.end)
            filesystem = parted.FileSystem(
                type="fat32" if planned.filesystem is Filesystem.VFAT else "ext4",
                geometry=geometry)
            partition = parted.Partition(disk=disk, type=parted.PARTITION_NORMAL,
                                         fs=filesystem, geometry=geometry)
            disk.addPartition(partition, constraint=parted.Constraint(exactGeom=geometry))
            if plan.table is TableType.GPT:
                partition.set_name(planned.label)
            if planned.role is PartitionRole.ESP or planned.bootable:
                # On GPT libparted's boot flag is the ESP type GUID; on MBR the active flag.
                partition.setFlag(parted.PARTITION_BOOT)
        disk.commitToDevice()
    except Exception as e:
        raise _step(device, step="writing the partition table", error=e) from e


def _set_identifiers(plan: PartitionPlan, device: Path) -> None:
    quiet = ["--no-reread", "--no-tell-kernel", "--quiet"]
    disk_id = plan.disk_id if plan.table is TableType.GPT else f"0x{plan.disk_id}"
    try:
        run(["sfdisk", *quiet, "--disk-id", device, disk_id])
        if plan.table is TableType.GPT:
            for partition in plan.partitions:
                run(["sfdisk", *quiet, "--part-uuid", device, str(partition.number),
                     partition.partition_uuid])
    except CommandError as e:
        raise _step(device, step="setting the disk and partition identifiers", error=e) from e


def _tell_kernel(plan: PartitionPlan, device: Path) -> None:
    try:
        disk = parted.newDisk(_fresh_device(device))
        disk.commitToOS()
    except Exception as e:
        raise _step(device, step="telling the kernel about the new partitions", error=e) from e


def _settle(device: Path) -> None:
    if not UDEV_CONTROL.exists():
        return
    try:
        run(["udevadm", "settle", "--timeout=30"])
    except CommandError as e:
        raise _step(device, step="waiting for udev", error=e) from e


def _wait_for_nodes(plan: PartitionPlan, device: Path, *, name: str, sysfs: SysBlock,
                    timeout: float) -> list[Path]:
    """Each partition's /dev node, once the kernel shows it at the plan's place."""
    _settle(device)
    scale = plan.sector_size // KERNEL_SECTOR
    deadline = time.monotonic() + timeout
    while True:
        missing = [f"{node_name(name, p.number)}: {why}" for p in plan.partitions
                   if (why := _node_problem(p, name=name, sysfs=sysfs, scale=scale))]
        if not missing:
            return [sysfs.dev / node_name(name, p.number) for p in plan.partitions]
        if time.monotonic() >= deadline:
            raise PartitioningError(f"{device}: partitions did not appear within {timeout:g} s: "
                                    + "; ".join(missing))
        time.sleep(_POLL_SECONDS)


def _node_problem(partition: PlannedPartition, *, name: str, sysfs: SysBlock,
                  scale: int) -> str | None:
    part = node_name(name, partition.number)
    entry = sysfs.sys_class_block / name / part
    try:
        start = int((entry / "start").read_text())
        size = int((entry / "size").read_text())
    except (OSError, ValueError):
        return "not in sysfs yet"
    want = (partition.start * scale, partition.sectors * scale)
    if (start, size) != want:
        return f"kernel shows start {start} size {size}, expected {want[0]} {want[1]}"
    if not (sysfs.dev / part).exists():
        return f"no {sysfs.dev / part} yet"
    return None


def make_filesystem(partition: PlannedPartition, node: Path, *, device: Path) -> None:
    if partition.filesystem is Filesystem.VFAT:
        argv: list[str | os.PathLike[str]] = [
            "mkfs.vfat", "-F", "32", "-n", partition.label,
            "-i", partition.filesystem_uuid.replace("-", ""), node]
    else:
        argv = ["mkfs.ext4", "-q", "-F", "-L", partition.label, "-U",
                partition.filesystem_uuid, node]
    try:
        run(["wipefs", "--all", "--quiet", node])
        run(argv)
    except CommandError as e:
        raise _step(device, step=f"making the {partition.role} file system on {node}",
                    error=e) from e


def verify(plan: PartitionPlan, device: Path, *, nodes: list[Path]) -> None:
    """Read the disk back and raise unless it matches the plan: the table from `sfdisk -J`,
    each file system from a low-level `blkid -p` probe (which reads the device itself, so it
    needs neither udev's database nor a cache)."""
    try:
        table = json.loads(run(["sfdisk", "--json", device]).text)["partitiontable"]
        probes = [_probe(node) for node in nodes]
    except (CommandError, ValueError, KeyError, TypeError) as e:
        raise _step(device, step="reading the partitions back", error=e) from e
    problems = list(_differences(plan, table=table, probes=probes, nodes=nodes))
    if problems:
        raise PartitioningError(f"{device} does not match its plan after partitioning: "
                                + "; ".join(problems))


def _probe(node: Path) -> dict[str, str]:
    """`blkid -p -o export`: KEY=value lines (exit code 2: nothing found)."""
    result = run(["blkid", "--probe", "--output", "export", node], success_codes=(0, 2))
    return dict(line.split("=", 1) for line in result.text.splitlines() if "=" in line)


def _differences(plan: PartitionPlan, *, table: Mapping[str, Any],
                 probes: list[dict[str, str]], nodes: list[Path]) -> Iterator[str]:
    disk_id = plan.disk_id if plan.table is TableType.GPT else f"0x{plan.disk_id}"
    yield from _compare("table", have={"label": table.get("label"),
                                       "id": str(table.get("id")).lower()},
                        want={"label": _SFDISK_LABELS[plan.table], "id": disk_id})
    found = table.get("partitions", [])
    if len(found) != len(plan.partitions):
        yield f"{len(found)} partitions, expected {len(plan.partitions)}"
        return
    for partition, entry, probe, node in zip(plan.partitions, found, probes, nodes,
                                             strict=True):
        where = f"partition {partition.number} ({partition.role})"
        have = {"start": entry.get("start"), "size": entry.get("size"),
                "type": str(entry.get("type")).upper()}
        want: dict[str, object] = {"start": partition.start, "size": partition.sectors}
        if plan.table is TableType.GPT:
            have.update(uuid=str(entry.get("uuid")).lower(), name=entry.get("name"))
            want.update(type=partition.type_guid, uuid=partition.partition_uuid,
                        name=partition.label)
        else:
            have["bootable"] = bool(entry.get("bootable"))
            want.update(type=partition.mbr_type, bootable=partition.bootable)
        yield from _compare(where, have=have, want=want)
        yield from _compare(f"{where} {node}", have={
            "file system": probe.get("TYPE"), "label": probe.get("LABEL"),
            "file-system UUID": probe.get("UUID", "").lower(),
            "partition UUID": probe.get("PART_ENTRY_UUID", "").lower()}, want={
            "file system": partition.filesystem.value, "label": partition.label,
            "file-system UUID": partition.filesystem_uuid.lower(),
            "partition UUID": partition.partition_uuid})


def _compare(where: str, *, have: Mapping[str, object],
             want: Mapping[str, object]) -> Iterator[str]:
    for key, value in want.items():
        if have.get(key) != value:
            yield f"{where}: {key} is {have.get(key)!r}, expected {value!r}"
