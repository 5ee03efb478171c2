"""Factory restore: the newest good image from RECOVERY onto PRIMARY, the unit's identity and
configuration into it, and the flag file `/boot.normal` last.

Rules, in order:
1. **Where**: PRIMARY (and DATA, for fstab) are found through `state/disks.json`, the
   partition plans manufacture applied, by partition UUID — a wiped PRIMARY has no label.
2. **Journal**: `state/restore-journal.json` names the run, the image and the phase; it is
   written (durably) before the first destructive step and after each phase, and removed
   when the restore is complete. A journal found at the start means the last restore never
   finished (power cut, crash, hang): that is said, and the image history already counts the
   open attempt as a failure (`ImageHistory.begin_attempt`).
3. **Pick**: the newest image for the unit's variant that the history has not abandoned
   (`ImageStore.pick`). Its signature is checked on open and every frame's sha256 as it is
   extracted; an image that fails is quarantined, its attempt recorded as failed, and the next
   older one is restored in the same run. No image left → `NoGoodImageError`.
4. **Write**: PRIMARY gets a new ext4 with its planned label and UUID (so /etc/fstab and
   `kiln.root=` stay right), the image is streamed into it, then `recovery.osconfig`
   writes the unit's configuration, and the Kiln boot files the image carries replace the
   installed ones when newer (`recovery.bootfiles`; a failure there is a warning). DATA is
   never touched, unless a restore request from the
   OS says `keep_data: false`: then it gets a fresh, empty file system (same label and UUID).
5. **Finish**: everything synced; then the attempt recorded as succeeded, the image recorded
   as installed (its boots are counted from now on, `recovery.boots`), the journal removed
   and a restore request cleared; then `/boot.normal` written and synced last. A power cut
   before the flag leaves a PRIMARY without it, which the next boot restores again; a cut
   after it finds nothing left open (had the records come after the flag, an unrequested
   restore cut between the two would boot normally with its attempt and journal open for
   good).
6. **Boots the OS never confirmed**: a restore that follows `BOOT_LIMIT` unconfirmed boots
   first records a failed attempt for the installed image, so an image that cannot boot is
   abandoned after the history's failure limit. An image installed on trial (an update) that
   left its one boot unconfirmed is abandoned at once, and the previous image comes back.
7. **An update's request** names its image (`image_id`): that one is restored when it
   qualifies, else the newest good one; with `trial` it is recorded as installed on trial.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.contract import parse, to_json
from kiln.errors import KilnError
from kiln.events import EventRecorder, Result
from kiln.fsutil import atomic_write_bytes, atomic_write_json, fsync_directory
from kiln.image.errors import ImageError
from kiln.image.extract import extract
from kiln.image.reader import ImageReader
from kiln.image.signing import TrustStore
from kiln.process import run
from recovery import boots
from recovery.layout import FLAG_FILE, RecoveryLayout, Request, StateFile
from recovery.osconfig import Mounts, configure
from recovery.partitioning import make_filesystem
from recovery.partitions import PartitionPlan, PartitionRole, PlannedPartition
from recovery.requests import read_restore_request
from recovery.store import ImageStore, NoGoodImageError, StoredImage

log = logging.getLogger(__name__)

BootFilesStep = Callable[[Path], "str | None"]  # recovery.bootfiles.BootFilesUpdate

STAGE = "restore"
MIB = 1 << 20


class RestoreError(KilnError):
    pass


def save_disks(layout: RecoveryLayout, plans: tuple[PartitionPlan, ...]) -> None:
    """Manufacture records the plans it applied: restore and erase find the partitions by
    them."""
    atomic_write_json(layout.state_file(StateFile.DISKS), [to_json(plan) for plan in plans])


def load_disks(layout: RecoveryLayout) -> tuple[PartitionPlan, ...]:
    path = layout.state_file(StateFile.DISKS)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise RestoreError(f"{path} is missing: this unit was not manufactured by this Kiln, "
                           "so its PRIMARY partition cannot be found") from None
    return tuple(parse(PartitionPlan, plan, subject=str(path)) for plan in document)


def planned(plans: tuple[PartitionPlan, ...], role: PartitionRole) -> PlannedPartition | None:
    return next((found for plan in plans if (found := plan.partition(role)) is not None), None)


def partition_node(partition: PlannedPartition, *, dev: Path = Path("/dev")) -> Path:
    link = dev / "disk" / "by-partuuid" / partition.partition_uuid.lower()
    if not link.exists():
        raise RestoreError(f"no partition has PARTUUID {partition.partition_uuid} (the "
                           f"{partition.role} partition manufacture made)")
    return link.resolve()


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where a restore writes: PRIMARY's node and a directory to mount it on."""

    primary: Path
    primary_plan: PlannedPartition
    mounts: Mounts
    mount_point: Path
    data: Path | None = None  # DATA's node: touched only when a request says wipe it
    data_plan: PlannedPartition | None = None


def find_target(layout: RecoveryLayout, *, mount_point: Path,
                dev: Path = Path("/dev")) -> Target:
    plans = load_disks(layout)
    primary = planned(plans, PartitionRole.PRIMARY)
    if primary is None:
        raise RestoreError("state/disks.json names no PRIMARY partition")
    recovery, data = planned(plans, PartitionRole.RECOVERY), planned(plans, PartitionRole.DATA)
    return Target(primary=partition_node(primary, dev=dev), primary_plan=primary,
                  mounts=Mounts(primary=primary.filesystem_uuid,
                                recovery=recovery.filesystem_uuid if recovery else None,
                                data=data.filesystem_uuid if data else None),
                  mount_point=mount_point,
                  data=partition_node(data, dev=dev) if data else None, data_plan=data)


class Journal:
    def __init__(self, layout: RecoveryLayout, run_id: str):
        self.path = layout.state_file(StateFile.JOURNAL)
        self.run_id = run_id

    def previous(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return found

    def write(self, *, image: StoredImage, phase: str) -> None:
        atomic_write_json(self.path, {"run_id": self.run_id, "image_id": image.image_id,
                                      "image": image.label, "phase": phase,
                                      "time_ns": time.time_ns()})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        fsync_directory(self.path.parent)


@dataclass(frozen=True, kw_only=True)
class Restored:
    image: StoredImage
    quarantined: tuple[str, ...]  # images given up on the way, with why
    payload_bytes: int
    seconds: float


@contextlib.contextmanager
def _mounted(node: Path, target: Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "ext4", "-o", "rw,noatime", node, target], timeout=120)
    try:
        yield target
    finally:
        os.sync()
        run(["umount", target], timeout=300)


def _install(image: StoredImage, *, store: ImageStore, target: Target, layout: RecoveryLayout,
             serial: str, journal: Journal, recorder: EventRecorder, wipe_data: bool,
             settle: Callable[[], None], boot_files: BootFilesStep | None) -> int:
    journal.write(image=image, phase="format")
    if wipe_data and target.data is not None and target.data_plan is not None:
        with recorder.stage(f"{STAGE}/data", "a fresh, empty DATA file system (requested)"):
            make_filesystem(target.data_plan, target.data, device=target.data)
    make_filesystem(target.primary_plan, target.primary, device=target.primary)
    journal.write(image=image, phase="write")
    with _mounted(target.primary, target.mount_point) as root:
        recorder.start(f"{STAGE}/write", f"{image.label} onto {target.primary}")
        began = time.monotonic()
        try:
            with ImageReader.open(image.path, store.trust) as reader:
                result = extract(reader, root)
            os.sync()  # the rate below is what reached the disk
        except BaseException as e:
            recorder.finish(f"{STAGE}/write", Result.FAIL, f"{type(e).__name__}: {e}")
            raise
        seconds = time.monotonic() - began
        wrote = (f"wrote {result.payload_bytes} bytes ({result.members} members) in "
                 f"{seconds:.2f} s, {result.payload_bytes / MIB / max(seconds, 1e-3):.1f} MiB/s")
        log.info("restore: %s", wrote)
        recorder.finish(f"{STAGE}/write", Result.SUCCESS, wrote)
        journal.write(image=image, phase="configure")
        with recorder.stage(f"{STAGE}/configure", "identity and configuration"):
            done = configure(root, layout=layout, serial=serial, mounts=target.mounts)
            log.info("restore: configured: %s", "; ".join(done))
        if boot_files is not None:
            _update_boot_files(boot_files, root, recorder=recorder)
        os.sync()
        settle()
        atomic_write_bytes(root / FLAG_FILE, f"{image.label}\n".encode())  # the last write
    return result.payload_bytes


def _settle(image: StoredImage, *, store: ImageStore, layout: RecoveryLayout,
            journal: Journal, trial: bool) -> None:
    """Everything that records a complete restore, just before the flag (rule 5)."""
    store.history.finish_attempt(image.image_id, succeeded=True)
    boots.record_installed(layout, image_id=image.image_id, label=image.label, trial=trial)
    journal.remove()
    requested = layout.request_file(Request.RESTORE)
    if requested.exists():
        requested.unlink()
        fsync_directory(requested.parent)
    log.info("restore: %s recorded as installed; the flag file next", image.label)


def _update_boot_files(step: BootFilesStep, root: Path, *, recorder: EventRecorder) -> None:
    """The image's Kiln boot files, when newer (`recovery.bootfiles`); a failure is a warning:
    the unit keeps booting the installed ones, and the next restore tries again."""
    name = f"{STAGE}/boot-files"
    recorder.start(name, "the Kiln kernel and ramdisk the image carries, when newer")
    try:
        done = step(root)
    except (KilnError, OSError) as e:
        log.warning("restore: boot files: kept the installed ones: %s", e)
        recorder.finish(name, Result.WARN, f"kept the installed ones: {e}")
        return
    if done:
        log.info("restore: boot files: %s", done)
    recorder.finish(name, Result.SUCCESS, done or "nothing newer in the image")


def restore(layout: RecoveryLayout, target: Target, *, trust: TrustStore, serial: str,
            variant: str | None, recorder: EventRecorder,
            boot_files: BootFilesStep | None = None) -> Restored:
    """Restore the newest good image (see the module's rules); raise `NoGoodImageError`
    when none is left, `RestoreError`/`KilnError` for anything else."""
    started = time.monotonic()
    journal = Journal(layout, recorder.run_id)
    previous = journal.previous()
    if previous is not None:
        log.warning("restore: the restore of %s (run %s) never finished (phase %s): it counts "
                    "as a failed attempt", previous.get("image"), previous.get("run_id"),
                    previous.get("phase"))
    store = ImageStore(layout.root, trust)
    gave_up = boots.unconfirmed(layout)
    if gave_up is not None and gave_up.given_up and gave_up.image_id:
        if gave_up.trial:
            reason = "the update did not confirm its first boot"
            log.warning("restore: %s did not boot (%s): given up", gave_up.label, reason)
            store.history.give_up(gave_up.image_id, reason=reason, limit=store.failure_limit)
        else:
            reason = f"the OS did not confirm {gave_up.count} boots in a row"
            log.warning("restore: %s did not boot (%s): a failed attempt", gave_up.label,
                        reason)
            store.history.finish_attempt(gave_up.image_id, succeeded=False, reason=reason)
    request = read_restore_request(layout)
    wanted = request.image_id if request is not None else None
    wipe_data = request is not None and not request.keep_data
    quarantined: list[str] = []
    while True:
        with recorder.stage(f"{STAGE}/pick", f"variant {variant or 'any'}"):
            try:
                image = store.pick(variant=variant, verify=False, prefer=wanted)
            except NoGoodImageError as e:
                raise NoGoodImageError([*quarantined, *e.reasons]) from None
        log.info("restore: %s onto %s", image.label, target.primary)
        store.history.begin_attempt(image.image_id)

        try:
            size = _install(image, store=store, target=target, layout=layout, serial=serial,
                            journal=journal, recorder=recorder, wipe_data=wipe_data,
                            settle=functools.partial(
                                _settle, image, store=store, layout=layout, journal=journal,
                                trial=bool(request and request.trial
                                           and image.image_id == wanted)),
                            boot_files=boot_files)
        except ImageError as e:
            store.history.finish_attempt(image.image_id, succeeded=False, reason=str(e))
            store.quarantine(image, str(e))
            quarantined.append(f"{image.label}: quarantined: {e}")
            log.error("restore: %s is bad (%s): quarantined; trying the next image",
                      image.label, e)
            continue
        except BaseException as e:
            # Settled already (the attempt closed)? Then PRIMARY lacks only its flag, and
            # the next boot restores again: nothing failed.
            if store.history.record(image.image_id).in_progress:
                store.history.finish_attempt(image.image_id, succeeded=False,
                                             reason=f"{type(e).__name__}: {e}")
            raise
        return Restored(image=image, quarantined=tuple(quarantined), payload_bytes=size,
                        seconds=time.monotonic() - started)
