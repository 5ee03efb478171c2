"""Factory restore on a loop device: a real RECOVERY with two images (the newest corrupt), a
real PRIMARY and DATA; the restore quarantines the bad image, installs the older one, writes
the unit's configuration and the flag file last, and leaves DATA alone."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from kiln.events import EventRecorder, EventType, Result
from kiln.image.builder import ImageSpec, build_image
from kiln.image.signing import SigningKey, TrustStore
from kiln.manufdata import Firmware
from kiln.process import run
from kiln.shadow import sha512_crypt
from recovery.boots import BOOT_LIMIT, count_handover, installed, record_installed, unconfirmed
from recovery.history import DEFAULT_FAILURE_LIMIT
from recovery.layout import FLAG_FILE, RecoveryLayout, Request, StateFile
from recovery.osconfig import Mounts, hostname_for
from recovery.partitioning import AppliedDisk, apply_plan
from recovery.partitions import PartitionPlan, PartitionRole
from recovery.requests import request_restore
from recovery.restore import (
    Journal,
    RestoreError,
    Target,
    find_target,
    load_disks,
    restore,
    save_disks,
)
from recovery.store import ImageStore, NoGoodImageError
from tests.recovery.loopdisk import TOOLS, AttachLoop, mounted, plan_for
from tests.recovery.test_store import flip_byte_in_frame

R = PartitionRole
COMMANDS = (*TOOLS, "mount", "umount", "tar")


def _image(tmp_path: Path, key: SigningKey, version: str) -> Path:
    rootfs = tmp_path / f"rootfs-{version}"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "version").write_text(f"{version}\n")
    (rootfs / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\nnobody:*:19000::::::\n")
    (rootfs / "etc" / "shadow").chmod(0o640)
    (rootfs / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 old-name\n")
    (rootfs / "blob").write_bytes(bytes(range(256)) * 2000 + version.encode())
    out = tmp_path / f"app-{version}.upd"
    build_image(rootfs, out, spec=ImageSpec(product="app", version=version, build=0,
                                            variants=("*",), frame_size=65536,
                                            created="2026-11-01T00:00:00Z"), keys=[key])
    return out


def _partitioned(attach_loop: AttachLoop, firmware: Firmware) -> tuple[PartitionPlan,
                                                                        AppliedDisk]:
    device = attach_loop()
    plan = plan_for(device, firmware)
    return plan, apply_plan(plan, device)


def _target(plan: PartitionPlan, applied: AppliedDisk, mount_point: Path, *,
            recovery_uuid: str | None = None, data_uuid: str | None = None,
            with_data: bool = False) -> Target:
    """Where restore writes on the loop disk; DATA's node only `with_data` (a wipe)."""
    primary, data = plan.partition(R.PRIMARY), plan.partition(R.DATA)
    assert primary is not None and data is not None
    return Target(primary=applied.node(R.PRIMARY), primary_plan=primary,
                  mounts=Mounts(primary=primary.filesystem_uuid, recovery=recovery_uuid,
                                data=data_uuid),
                  mount_point=mount_point, data=applied.node(R.DATA) if with_data else None,
                  data_plan=data if with_data else None)


@pytest.mark.loop
@pytest.mark.allow_commands(*COMMANDS)
def test_a_restore_skips_a_corrupt_image_configures_the_os_and_keeps_data(
        attach_loop: AttachLoop, tmp_path: Path, signing_key: SigningKey,
        trust: TrustStore) -> None:
    plan, applied = _partitioned(attach_loop, Firmware.BIOS)
    older, newer = _image(tmp_path, signing_key, "1.0.0"), _image(tmp_path, signing_key, "2.0.0")
    with mounted(applied.node(R.RECOVERY), tmp_path / "rec") as rec, \
            mounted(applied.node(R.DATA), tmp_path / "data") as data:
        layout = RecoveryLayout(rec)
        layout.state.mkdir()
        save_disks(layout, (plan,))
        assert load_disks(layout) == (plan,)
        layout.state_file(StateFile.ADMIN_HASH).write_text(sha512_crypt("s3cret") + "\n")
        layout.state_file(StateFile.DEVICE_TOKEN).write_text("kilndev_token")
        layout.requests.mkdir()
        layout.request_file(Request.RESTORE).write_text("{}")
        (data / "customer.txt").write_text("keep me")
        store = ImageStore(rec, trust)
        store.add(older)
        stored_newer = store.add(newer)
        flip_byte_in_frame(stored_newer.path, trust, 1)
        # A restore that was cut off earlier: its journal and its open attempt are left.
        interrupted = store.images()[-1]
        store.history.begin_attempt(interrupted.image_id)
        Journal(layout, "run-before").write(image=interrupted, phase="write")

        target = _target(plan, applied, tmp_path / "primary", recovery_uuid="r-uuid",
                         data_uuid="d-uuid")
        primary, partition = target.primary, target.primary_plan
        recorder = EventRecorder(serial="SN 0042/X", spool_dir=layout.logs)
        restored = restore(layout, target, trust=trust, serial="SN 0042/X", variant=None,
                           recorder=recorder)

        assert restored.image.manifest.version == "1.0.0"
        assert len(restored.quarantined) == 1 and "2.0.0" in restored.quarantined[0]
        assert [i.manifest.version for i in store.images()] == ["1.0.0"]
        records = store.history.records()
        assert records[stored_newer.image_id].failures == 1
        assert records[interrupted.image_id].interrupted == 1  # the cut-off attempt counted
        assert records[restored.image.image_id].successes == 1
        assert not layout.state_file(StateFile.JOURNAL).exists()
        assert not layout.requested(Request.RESTORE)
        machine_id = layout.state_file(StateFile.MACHINE_ID).read_text().strip()
        finished = {e.name: e.result for e in recorder.spool.events()
                    if e.type is EventType.FINISH}
        assert finished["restore/configure"] is Result.SUCCESS
        writes = [e.result for e in recorder.spool.events()
                  if e.type is EventType.FINISH and e.name == "restore/write"]
        assert writes == [Result.FAIL, Result.SUCCESS]  # the corrupt image, then the older one
        assert (data / "customer.txt").read_text() == "keep me"

    with mounted(primary, tmp_path / "check") as root:
        assert (root / FLAG_FILE).read_text().startswith("app 1.0.0")
        assert (root / "etc/version").read_text() == "1.0.0\n"
        assert (root / "etc/hostname").read_text() == "sn-0042-x\n"
        assert (root / "etc/hosts").read_text() == "127.0.0.1 localhost\n127.0.1.1 sn-0042-x\n"
        assert re.fullmatch(r"[0-9a-f]{32}\n", (root / "etc/machine-id").read_text())
        assert (root / "etc/machine-id").read_text().strip() == machine_id
        fstab = (root / "etc/fstab").read_text()
        assert f"UUID={partition.filesystem_uuid} / ext4" in fstab
        assert "UUID=r-uuid /recovery" in fstab
        assert "UUID=d-uuid /data ext4 defaults,noatime,nofail" in fstab
        assert "DHCP=yes" in (root / "etc/systemd/network/80-kiln-dhcp.network").read_text()
        shadow = root / "etc/shadow"
        assert shadow.read_text().startswith("root:$6$") and "nobody:*" in shadow.read_text()
        assert stat.S_IMODE(shadow.stat().st_mode) == 0o640
        assert stat.S_IMODE((root / "etc/kiln/device-token").stat().st_mode) == 0o600
    found = run(["blkid", "--probe", "--output", "export", primary]).text
    assert f"UUID={partition.filesystem_uuid}" in found and "LABEL=PRIMARY" in found


@pytest.mark.loop
@pytest.mark.allow_commands(*COMMANDS)
def test_no_good_image_left_says_why_and_writes_no_flag(
        attach_loop: AttachLoop, tmp_path: Path, signing_key: SigningKey,
        trust: TrustStore) -> None:
    plan, applied = _partitioned(attach_loop, Firmware.UEFI)
    only = _image(tmp_path, signing_key, "1.0.0")
    with mounted(applied.node(R.RECOVERY), tmp_path / "rec") as rec:
        layout = RecoveryLayout(rec)
        stored = ImageStore(rec, trust).add(only)
        flip_byte_in_frame(stored.path, trust, 0)
        target = _target(plan, applied, tmp_path / "primary")
        recorder = EventRecorder(serial="SN1", spool_dir=layout.logs)
        with pytest.raises(NoGoodImageError, match="quarantined"):
            restore(layout, target, trust=trust, serial="SN1", variant=None, recorder=recorder)
    with mounted(applied.node(R.PRIMARY), tmp_path / "check") as root:
        assert not (root / FLAG_FILE).exists()


@pytest.mark.loop
@pytest.mark.allow_commands(*COMMANDS)
def test_a_request_to_wipe_data_gives_data_a_fresh_file_system(
        attach_loop: AttachLoop, tmp_path: Path, signing_key: SigningKey,
        trust: TrustStore) -> None:
    plan, applied = _partitioned(attach_loop, Firmware.BIOS)
    data = plan.partition(R.DATA)
    assert data is not None
    with mounted(applied.node(R.DATA), tmp_path / "data") as mount:
        (mount / "customer.txt").write_text("old")
    with mounted(applied.node(R.RECOVERY), tmp_path / "rec") as rec:
        layout = RecoveryLayout(rec)
        layout.state.mkdir()
        ImageStore(rec, trust).add(_image(tmp_path, signing_key, "1.0.0"))
        request_restore(layout, keep_data=False, reason="customer asked")
        target = _target(plan, applied, tmp_path / "primary",
                         data_uuid=data.filesystem_uuid, with_data=True)
        recorder = EventRecorder(serial="SN2", spool_dir=layout.logs)
        restore(layout, target, trust=trust, serial="SN2", variant=None, recorder=recorder)
        assert not layout.requested(Request.RESTORE)
    with mounted(applied.node(R.DATA), tmp_path / "data") as mount:
        assert not (mount / "customer.txt").exists()
    found = run(["blkid", "--probe", "--output", "export", applied.node(R.DATA)]).text
    assert f"UUID={data.filesystem_uuid}" in found and "LABEL=DATA" in found


def test_the_target_is_found_by_partition_uuid(tmp_path: Path) -> None:
    plan = plan_for(Path("/dev/vda"), Firmware.BIOS)
    layout = RecoveryLayout(tmp_path / "rec")
    with pytest.raises(RestoreError, match=r"disks\.json is missing"):
        find_target(layout, mount_point=tmp_path / "p", dev=tmp_path / "dev")
    layout.state.mkdir(parents=True)
    save_disks(layout, (plan,))
    primary = plan.partition(R.PRIMARY)
    assert primary is not None
    with pytest.raises(RestoreError, match=f"PARTUUID {primary.partition_uuid}"):
        find_target(layout, mount_point=tmp_path / "p", dev=tmp_path / "dev")
    links = tmp_path / "dev/disk/by-partuuid"
    links.mkdir(parents=True)
    data = plan.partition(R.DATA)
    assert data is not None
    for partition, node in ((primary, "vda2"), (data, "vda3")):
        (tmp_path / "dev" / node).touch()
        (links / partition.partition_uuid.lower()).symlink_to(tmp_path / "dev" / node)
    target = find_target(layout, mount_point=tmp_path / "p", dev=tmp_path / "dev")
    assert (target.primary, target.data) == (tmp_path / "dev/vda2", tmp_path / "dev/vda3")
    assert target.mounts.data == data.filesystem_uuid
    assert json.loads(layout.state_file(StateFile.DISKS).read_text())[0]["disk"] == "/dev/vda"


@pytest.mark.parametrize(("serial", "name"), [
    ("ABC-123", "abc-123"), ("  Lab Unit #7 ", "lab-unit-7"), ("___", "kiln-unit"),
    ("x" * 80, "x" * 63)])
def test_the_hostname_comes_from_the_serial(serial: str, name: str) -> None:
    assert hostname_for(serial) == name


@pytest.mark.loop
@pytest.mark.allow_commands(*COMMANDS)
def test_an_image_whose_boots_are_never_confirmed_is_given_up_for_the_older_one(
        attach_loop: AttachLoop, tmp_path: Path, signing_key: SigningKey,
        trust: TrustStore) -> None:
    plan, applied = _partitioned(attach_loop, Firmware.BIOS)
    with mounted(applied.node(R.RECOVERY), tmp_path / "rec") as rec:
        layout = RecoveryLayout(rec)
        layout.state.mkdir()
        store = ImageStore(rec, trust)
        store.add(_image(tmp_path, signing_key, "1.0.0"))
        newer = store.add(_image(tmp_path, signing_key, "2.0.0"))
        target = _target(plan, applied, tmp_path / "primary")
        recorder = EventRecorder(serial="SN3", spool_dir=layout.logs)
        # Two earlier rounds of 2.0.0 that never came up, and the third just ended.
        for _ in range(DEFAULT_FAILURE_LIMIT - 1):
            store.history.finish_attempt(newer.image_id, succeeded=False, reason="no boot")
        record_installed(layout, image_id=newer.image_id, label=newer.label)
        for _ in range(BOOT_LIMIT):
            count_handover(layout, label=newer.label)
        restored = restore(layout, target, trust=trust, serial="SN3", variant=None,
                           recorder=recorder)
        assert restored.image.manifest.version == "1.0.0"
        record = store.history.record(newer.image_id)
        assert record.consecutive_failures == DEFAULT_FAILURE_LIMIT
        assert record.last_reason == f"the OS did not confirm {BOOT_LIMIT} boots in a row"
        assert unconfirmed(layout) is None
        installed_now = installed(layout)
        assert installed_now is not None and installed_now.image_id == restored.image.image_id


@pytest.mark.loop
@pytest.mark.allow_commands(*COMMANDS)
def test_everything_is_recorded_before_the_flag_so_a_cut_there_leaves_nothing_open(
        attach_loop: AttachLoop, tmp_path: Path, signing_key: SigningKey, trust: TrustStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An unrequested restore (a blank PRIMARY) whose flag write is lost: the next boot sees
    no flag and restores again; had the records come after the flag, a cut between them
    would boot normally with the attempt and the journal open for good."""
    plan, applied = _partitioned(attach_loop, Firmware.BIOS)
    with mounted(applied.node(R.RECOVERY), tmp_path / "rec") as rec:
        layout = RecoveryLayout(rec)
        layout.state.mkdir()
        store = ImageStore(rec, trust)
        stored = store.add(_image(tmp_path, signing_key, "1.0.0"))
        target = _target(plan, applied, tmp_path / "primary")
        recorder = EventRecorder(serial="SN4", spool_dir=layout.logs)

        def power_lost(path: Path, data: bytes) -> None:
            raise OSError(f"power lost before {path.name} was written")

        with monkeypatch.context() as patch:
            patch.setattr("recovery.restore.atomic_write_bytes", power_lost)
            with pytest.raises(OSError, match=r"power lost before boot\.normal"):
                restore(layout, target, trust=trust, serial="SN4", variant=None,
                        recorder=recorder)
        record = store.history.record(stored.image_id)
        assert (record.successes, record.failures, record.in_progress) == (1, 0, False)
        assert not layout.state_file(StateFile.JOURNAL).exists()
        installed_then = installed(layout)
        assert installed_then is not None and installed_then.image_id == stored.image_id
        with mounted(applied.node(R.PRIMARY), tmp_path / "cut") as root:
            assert not (root / FLAG_FILE).exists()  # so the next boot restores again

        restore(layout, target, trust=trust, serial="SN4", variant=None, recorder=recorder)
        record = store.history.record(stored.image_id)
        assert (record.successes, record.interrupted, record.in_progress) == (2, 0, False)
    with mounted(applied.node(R.PRIMARY), tmp_path / "check") as root:
        assert (root / FLAG_FILE).read_text().startswith("app 1.0.0")


@pytest.mark.loop
@pytest.mark.allow_commands(*COMMANDS)
def test_an_update_on_trial_restores_its_image_and_falls_back_after_one_unconfirmed_boot(
        attach_loop: AttachLoop, tmp_path: Path, signing_key: SigningKey,
        trust: TrustStore) -> None:
    """The update agent's request names an older image than the newest on RECOVERY and asks
    for a trial: that image is restored, recorded on trial; its first boot left unconfirmed
    gives it up at once, and the next restore brings back the newest good image, DATA kept."""
    plan, applied = _partitioned(attach_loop, Firmware.BIOS)
    with mounted(applied.node(R.RECOVERY), tmp_path / "rec") as rec:
        layout = RecoveryLayout(rec)
        layout.state.mkdir()
        store = ImageStore(rec, trust)
        wanted = store.add(_image(tmp_path, signing_key, "2.0.0"))
        newest = store.add(_image(tmp_path, signing_key, "3.0.0"))
        target = _target(plan, applied, tmp_path / "primary")
        recorder = EventRecorder(serial="SN5", spool_dir=layout.logs)
        request_restore(layout, keep_data=True, reason="update", image_id=wanted.image_id,
                        trial=True)
        first = restore(layout, target, trust=trust, serial="SN5", variant=None,
                        recorder=recorder)
        assert first.image.image_id == wanted.image_id
        on_trial = installed(layout)
        assert on_trial is not None and on_trial.trial
        assert not layout.requested(Request.RESTORE)
        count = count_handover(layout, label=wanted.label)
        assert (count.trial, count.limit, count.given_up) == (True, 1, True)
        second = restore(layout, target, trust=trust, serial="SN5", variant=None,
                         recorder=recorder)
        assert second.image.image_id == newest.image_id
        record = store.history.record(wanted.image_id)
        assert record.consecutive_failures >= DEFAULT_FAILURE_LIMIT
        assert record.last_reason == "the update did not confirm its first boot"
        after = installed(layout)
        assert after is not None and not after.trial
        # asked for again, the abandoned image is passed over for the newest good one
        assert store.pick(verify=False, prefer=wanted.image_id).image_id == newest.image_id
