"""The ramdisk's erase run without a disk to erase: what it says and keeps when it cannot
go on (the QEMU tests in tests/erase/ run the whole erase)."""

from __future__ import annotations

import json
from pathlib import Path

from initramfs.erasing import run_erase, send_outbox, unsent_certificates
from initramfs.network import NetworkError
from kiln.events import EventRecorder, spools
from recovery.layout import RecoveryLayout, StateFile


def _no_network() -> None:
    raise NetworkError("network: no physical network interface found")


def _manufactured(tmp_path: Path) -> RecoveryLayout:
    layout = RecoveryLayout(tmp_path)
    layout.state.mkdir()
    layout.state_file(StateFile.IDENTITY).write_text(json.dumps({
        "serial": "UNIT-9", "variant": "v", "profile_url": "http://server/mfg/p/manufData.json",
        "run_id": "r", "manufactured_ns": 1}))
    layout.state_file(StateFile.SERVER).write_text(json.dumps({
        "events_url": "http://server/api/v1/events", "units_url": "http://server/mfg/p/units",
        "credentials_url": "http://server/mfg/p/credentials"}))
    layout.state_file(StateFile.DEVICE_TOKEN).write_text("kilndev_x\n")
    return layout


def test_without_a_network_everything_stays_on_recovery(tmp_path: Path) -> None:
    layout = _manufactured(tmp_path)
    EventRecorder(serial="UNIT-9", spool_dir=layout.logs).start("erase", "run")
    layout.certificates.mkdir()
    (layout.certificates / "erase-r1.json").write_text('{"run_id": "r1"}')
    said = send_outbox(layout, serial="UNIT-9", connect=_no_network)
    assert said.startswith("kept on RECOVERY for a later boot (network: no physical")
    assert [len(spool.pending()) for spool in spools(layout.logs)] == [1]
    assert not (layout.certificates / "erase-r1.sent").exists()
    assert unsent_certificates(layout) == [layout.certificates / "erase-r1.json"]
    (layout.certificates / "erase-r0.json").write_text('{"run_id": "r0"}')
    (layout.certificates / "erase-r0.sent").write_text("1\n")
    assert unsent_certificates(layout) == [layout.certificates / "erase-r1.json"]


def test_a_unit_without_disks_json_fails_with_why_and_backs_off(tmp_path: Path) -> None:
    layout = _manufactured(tmp_path)
    first = run_erase(tmp_path, connect=_no_network)
    second = run_erase(tmp_path, connect=_no_network)
    assert not first.ok and "state/disks.json is missing" in first.message
    assert (first.pause_seconds, second.pause_seconds) == (30.0, 60.0)
    assert layout.state_file(StateFile.ERASE_FAILED_BOOTS).read_text() == "2\n"
    assert not layout.certificates.exists()  # nothing was erased: nothing to certify


def test_an_unmanufactured_unit_says_so(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    verdict = run_erase(tmp_path, connect=_no_network)
    assert not verdict.ok and "was this unit manufactured?" in verdict.message
