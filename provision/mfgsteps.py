"""The manufacture steps after validation, declared as data (`STEPS`), and the run's context.

Each `Step` is an event stage `manufacture/<name>` that `provision.manufacture` runs in order;
a step returns None (success) or a `StepNote` (e.g. a warning). Rules:

- No step before `partition` writes to a disk; `credentials` comes before it so a server
  that refuses them leaves the disks untouched (the password stays in memory until `secrets`).
- `partition`: firmware `auto` → UEFI when `/sys/firmware/efi` exists, else BIOS; one plan per
  disk (`recovery.partitions.plan_layout`), applied with `recovery.partitioning.apply_plan`.
- `mount`: RECOVERY's partition node (not its label: udev may not have caught up) is mounted
  read-write; the event spool moves into its `log/` and the run's log file starts there.
- `boot`: GRUB with the normal, factory restore and data erase entries
  (`recovery.bootsetup`) from the kernel and initrd manufData placed on RECOVERY (none named:
  a warning, the unit will not boot its disk); on UEFI the ESP is mounted for it and Kiln's
  NVRAM entries are made (`recovery.uefi_entries`). The consoles are the running kernel's.
- `files`: one HEAD per file and hook script (`provision.preflight`): every one missing or
  not as manufData describes it is listed, and the run fails before a disk is touched.
- Hook points (`kiln.manufdata.HookPoint`) sit between the steps; `provision.hooks` runs
  manufData's scripts there (`before_validate` runs in `provision.manufacture`).
- `wipe`: PRIMARY's first MiB is zeroed and synced, so the next boot finds no PRIMARY file
  system and restores the factory image from RECOVERY.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.events import EventRecorder, Result
from kiln.image.signing import PUBLIC_KEY_SUFFIXES, TrustStore
from kiln.manufdata import FileKind, Firmware, HookPoint, ManufData
from kiln.process import CommandError, run
from kiln.serverclient import ServerClient, UnitCredentials
from provision.credentials import write_credentials
from provision.fill import Identity, fill_recovery, install_keys, write_state
from provision.hooks import HookContext
from provision.inventory import Disk
from provision.preflight import check_sources
from provision.validate import Validation
from recovery.bootfiles import mounted_esp
from recovery.bootsetup import install_boot, running_console_arguments
from recovery.layout import RecoveryLayout
from recovery.partitioning import AppliedDisk, apply_plan
from recovery.partitions import PartitionRole, TargetDisk, plan_layout
from recovery.restore import save_disks
from recovery.uefi_entries import EspLocation, ensure_uefi_entries

log = logging.getLogger(__name__)

WIPE_BYTES = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Machine:
    """Where the runner meets the system (tests may point it elsewhere)."""

    root: Path = Path("/")  # the inventory reads root/sys and root/proc
    trust_dir: Path = Path("/etc/kiln/keys")  # the ramdisk's trusted image-signing keys
    work: Path = Path("/run/kiln/manufacture")  # the spool until RECOVERY exists, mounts
    efi_dir: Path = Path("/sys/firmware/efi")


@dataclass(frozen=True, kw_only=True)
class LogHooks:
    """PID 1's run log: started on RECOVERY once it is mounted, closed before unmounting."""

    attach: Callable[[Path], object]
    detach: Callable[[], object]


@dataclass(kw_only=True)
class RunState:
    """One run's context: what earlier steps found for later ones (no globals)."""

    machine: Machine
    client: ServerClient
    manufdata: ManufData
    validation: Validation
    recorder: EventRecorder
    serial: str
    variant_name: str | None
    started_ns: int
    log_hooks: LogHooks | None = None
    credentials: UnitCredentials | None = field(default=None, repr=False)
    applied: tuple[AppliedDisk, ...] = ()
    recovery: Path | None = None  # RECOVERY's mount point once mounted

    @property
    def layout(self) -> RecoveryLayout:
        if self.recovery is None:
            raise RuntimeError("RECOVERY is not mounted yet")
        return RecoveryLayout(self.recovery)

    def node(self, role: PartitionRole) -> Path:
        for applied in self.applied:
            try:
                return applied.node(role)
            except KeyError:
                continue
        raise KeyError(f"no {role} partition was made")


@dataclass(frozen=True, kw_only=True)
class StepNote:
    result: Result = Result.SUCCESS
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class Step:
    name: str
    description: str
    run: Callable[[RunState], StepNote | None]
    flush_after: bool = True
    flush_required: bool = False


def firmware_of(state: RunState) -> Firmware:
    wanted = state.manufdata.layout.firmware
    if wanted is not Firmware.AUTO:
        return wanted
    return Firmware.UEFI if state.machine.efi_dir.is_dir() else Firmware.BIOS


def _target(disk: Disk, root: Path) -> TargetDisk:
    sector = root / "sys/block" / disk.name / "queue/logical_block_size"
    try:
        size = int(sector.read_text())
    except (OSError, ValueError):
        size = 512
    return TargetDisk(name=disk.path, size_bytes=disk.size_bytes, sector_size=size)


def fetch_credentials(state: RunState) -> StepNote:
    state.credentials = state.client.credentials(state.serial)
    return StepNote(message="received (kept in memory until RECOVERY exists)")


def partition(state: RunState) -> StepNote:
    validation = state.validation
    if validation.primary_disk is None:
        raise RuntimeError("validation chose no primary disk")
    firmware = firmware_of(state)
    recovery = validation.recovery_disk
    plans = plan_layout(state.manufdata.layout, firmware=firmware,
                        primary=_target(validation.primary_disk, state.machine.root),
                        recovery=_target(recovery, state.machine.root) if recovery else None,
                        new_uuid=uuid.uuid4)
    state.applied = tuple(apply_plan(plan, Path(plan.disk)) for plan in plans)
    parts = "; ".join(f"{plan.disk} {plan.table}: " + ", ".join(
        f"{p.label} {plan.size_bytes(p) >> 20} MiB" for p in plan.partitions) for plan in plans)
    return StepNote(message=f"{firmware}: {parts}")


def mount_recovery(state: RunState) -> StepNote:
    node = state.node(PartitionRole.RECOVERY)
    target = state.machine.work / "recovery"
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "ext4", "-o", "rw,noatime", node, target], timeout=120)
    state.recovery = target
    logs = state.layout.logs
    logs.mkdir(parents=True, exist_ok=True)
    old = state.recorder.spool
    for path in (old.path, old.acked_path):
        if path.exists():
            shutil.copy2(path, logs / path.name)
    state.recorder = EventRecorder(serial=state.serial, spool_dir=logs, run_id=old.run_id)
    for path in (old.path, old.acked_path):
        path.unlink(missing_ok=True)
    if state.log_hooks is not None:
        state.log_hooks.attach(logs)
    return StepNote(message=f"{node} on {target}; events spooled in log/")


def fill(state: RunState) -> StepNote:
    trust = TrustStore.from_paths(sorted(
        path for path in state.machine.trust_dir.iterdir() if path.suffix in
        PUBLIC_KEY_SUFFIXES))
    placed = fill_recovery(state.manufdata, client=state.client, layout=state.layout,
                           trust=trust, recorder=state.recorder)
    return StepNote(message=f"{len(placed)} file(s) placed")


def keys(state: RunState) -> StepNote:
    copied = install_keys(state.machine.trust_dir, state.layout)
    return StepNote(message=", ".join(path.name for path in copied))


def write_unit_state(state: RunState) -> StepNote:
    identity = Identity(serial=state.serial, variant=state.variant_name or "",
                        profile_url=state.client.manufdata_url,
                        run_id=state.recorder.run_id, manufactured_ns=time.time_ns())
    write_state(state.layout, identity=identity, manufdata=state.manufdata)
    save_disks(state.layout, tuple(applied.plan for applied in state.applied))
    return StepNote(message="identity.json, factory.json, server.json, disks.json")


def secrets(state: RunState) -> StepNote:
    if state.credentials is None:
        raise RuntimeError("the credentials were not fetched")
    write_credentials(state.credentials, layout=state.layout)
    state.credentials = None
    return StepNote(message="admin password hash and device token in state/")


def _boot_file(state: RunState, kind: FileKind) -> Path | None:
    found = [spec for spec in state.manufdata.files if spec.kind is kind]
    return state.layout.root / found[0].destination if found else None


def boot_setup(state: RunState) -> StepNote:
    """The unit boots its disk into the Kiln ramdisk from RECOVERY (or the ESP): GRUB with
    normal, factory restore and data erase entries; on UEFI also Kiln's NVRAM entries."""
    kernel, initrd = _boot_file(state, FileKind.KERNEL), _boot_file(state, FileKind.INITRD)
    if kernel is None or initrd is None:
        return StepNote(result=Result.WARN,
                        message="manufData names no kernel and initrd files: this unit will "
                                "not boot from its disk")
    firmware = firmware_of(state)
    console = running_console_arguments(state.machine.root)  # the line's consoles
    role = PartitionRole.ESP if firmware is Firmware.UEFI else PartitionRole.RECOVERY
    applied = next(disk for disk in state.applied if disk.plan.partition(role) is not None)
    if firmware is Firmware.BIOS:
        setup = install_boot(firmware=firmware, disk=applied.device, applied=applied,
                             esp_mount=None, recovery_mount=state.layout.root, kernel=kernel,
                             initrd=initrd, console_args=console)
        return StepNote(message=f"GRUB in the MBR of {applied.device}, {setup.config}")
    with mounted_esp(applied.node(PartitionRole.ESP), state.machine.work / "esp") as esp:
        setup = install_boot(firmware=firmware, disk=applied.device, applied=applied,
                             esp_mount=esp, recovery_mount=state.layout.root, kernel=kernel,
                             initrd=initrd, console_args=console)
    entries = ensure_uefi_entries(esp=EspLocation.from_plan(applied.plan),
                                  console_args=console)
    return StepNote(message=f"GRUB at {setup.loader.relative_to(esp)} on {applied.device}; "
                            f"{len(entries)} Kiln NVRAM entries")


def hook_context(state: RunState) -> HookContext:
    return HookContext(client=state.client, recorder=state.recorder, work=state.machine.work,
                       serial=state.serial, variant=state.variant_name,
                       product=state.manufdata.product, recovery=state.recovery)


def preflight(state: RunState) -> StepNote:
    checked = check_sources(state.client, state.manufdata, variant=state.variant_name)
    return StepNote(message=f"{checked} file(s) reachable, sizes and hashes as manufData says")


def wipe_primary(state: RunState) -> StepNote:
    node = state.node(PartitionRole.PRIMARY)
    fd = os.open(node, os.O_WRONLY)
    try:
        os.write(fd, bytes(WIPE_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    return StepNote(message=f"first {WIPE_BYTES >> 20} MiB of {node} zeroed: the next boot "
                            "restores")


def unmount_recovery(state: RunState) -> None:
    if state.recovery is None:
        return
    if state.log_hooks is not None:
        state.log_hooks.detach()
    os.sync()
    try:
        run(["umount", state.recovery], timeout=120)
    except CommandError as e:
        log.warning("cannot unmount RECOVERY: %s", e)
    state.recovery = None


STEPS: tuple[Step | HookPoint, ...] = (
    HookPoint.AFTER_VALIDATE,
    Step(name="files", description="every file manufData names can be had", run=preflight),
    Step(name="credentials", description="the unit's credentials from the server",
         run=fetch_credentials),
    Step(name="partition", description="partition and format the disk(s)", run=partition),
    Step(name="mount", description="mount RECOVERY, move the event spool there",
         run=mount_recovery),
    HookPoint.AFTER_PARTITION,
    Step(name="recovery", description="download every file onto RECOVERY", run=fill),
    HookPoint.AFTER_IMAGES,
    Step(name="keys", description="trusted image-signing keys onto RECOVERY", run=keys),
    Step(name="state", description="identity and factory configuration", run=write_unit_state),
    Step(name="secrets", description="credentials onto RECOVERY", run=secrets),
    Step(name="boot", description="boot setup", run=boot_setup),
    Step(name="wipe", description="wipe PRIMARY's start so the next boot restores",
         run=wipe_primary),
    HookPoint.BEFORE_REBOOT,
)
