"""The boot decision against a fake system root: directories stand in for the mounted
RECOVERY and PRIMARY volumes, and a fake `Volumes` says what mounts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from initramfs.decide import BootFacts, BootMode, PrimaryState, decide, redacted
from initramfs.volumes import MountError, VolumeMissingError, gather_facts
from kiln.cmdline import parse_cmdline
from recovery.boots import BOOT_LIMIT, confirm, count_handover
from recovery.layout import RecoveryLayout


class FakeVolumes:
    def __init__(self, root: Path, *, recovery: bool = True, primary: str = "ok"):
        self.root = root
        self.recovery = recovery
        self.primary = primary
        self.asked_for: list[str] = []

    def mount_recovery(self) -> Path | None:
        if not self.recovery:
            return None
        path = self.root / "recovery"
        path.mkdir(exist_ok=True)
        return path

    def mount_primary(self, spec: str) -> Path:
        self.asked_for.append(spec)
        if self.primary == "missing":
            raise VolumeMissingError(f"no partition has {spec}")
        if self.primary == "broken":
            raise MountError("cannot mount /dev/vda3: wrong fs type, bad superblock")
        path = self.root / "primary"
        path.mkdir(exist_ok=True)
        return path


@pytest.fixture
def system(tmp_path: Path) -> FakeVolumes:
    return FakeVolumes(tmp_path)


def flag(system: FakeVolumes) -> None:
    (system.root / "primary").mkdir(exist_ok=True)
    (system.root / "primary" / "boot.normal").write_text("")


def request(system: FakeVolumes, name: str) -> None:
    directory = system.root / "recovery" / "requests"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps({"keep_data": True}))


def decision_for(system: FakeVolumes, cmdline: str = "console=ttyS0") -> tuple[BootMode, str]:
    facts, _ = gather_facts(parse_cmdline(cmdline), system)
    decision = decide(facts)
    return decision.mode, decision.reason


def test_flag_file_and_no_request_boots_normally(system: FakeVolumes) -> None:
    flag(system)
    assert decision_for(system)[0] is BootMode.NORMAL


def test_no_flag_file_restores(system: FakeVolumes) -> None:
    (system.root / "primary").mkdir()
    mode, reason = decision_for(system)
    assert mode is BootMode.RESTORE
    assert "no /boot.normal" in reason


def test_boots_the_os_never_confirmed_end_in_a_restore(system: FakeVolumes) -> None:
    flag(system)
    layout = RecoveryLayout(system.root / "recovery")
    layout.state.mkdir(parents=True)
    for _ in range(BOOT_LIMIT - 1):
        count_handover(layout, label="app 2.0")
    assert decision_for(system)[0] is BootMode.NORMAL
    count_handover(layout, label="app 2.0")
    mode, reason = decision_for(system)
    assert mode is BootMode.RESTORE
    assert reason == (f"the OS did not confirm its last {BOOT_LIMIT} boots: its image counts "
                      "a failed attempt")
    confirm(layout)
    assert decision_for(system)[0] is BootMode.NORMAL


def test_restore_request_wins_over_the_flag(system: FakeVolumes) -> None:
    flag(system)
    request(system, "restore")
    mode, reason = decision_for(system)
    assert mode is BootMode.RESTORE
    assert "restore was requested" in reason


def test_erase_request_wins_over_everything_but_mfgurl_and_forced_modes(
    system: FakeVolumes,
) -> None:
    flag(system)
    request(system, "restore")
    request(system, "erase")
    assert decision_for(system)[0] is BootMode.ERASE
    assert decision_for(system, "kiln.mode=restore")[0] is BootMode.RESTORE
    assert decision_for(system, "mfgurl=http://s/m.json kiln.mode=restore")[0] is (
        BootMode.MANUFACTURE
    )


def test_missing_primary_restores_and_names_the_root(system: FakeVolumes) -> None:
    system.primary = "missing"
    mode, reason = decision_for(system, "kiln.root=UUID=0a1b")
    assert mode is BootMode.RESTORE
    assert "no partition has UUID=0a1b" in reason
    assert system.asked_for == ["UUID=0a1b"]


def test_unreadable_primary_restores_with_the_mount_error(system: FakeVolumes) -> None:
    system.primary = "broken"
    mode, reason = decision_for(system)
    assert mode is BootMode.RESTORE
    assert "does not mount" in reason
    assert "bad superblock" in reason


def test_missing_recovery_is_said_and_requests_cannot_exist(system: FakeVolumes) -> None:
    system.recovery = False
    system.primary = "missing"
    facts, recovery = gather_facts(parse_cmdline(""), system)
    assert recovery is None
    assert not facts.erase_requested
    assert "RECOVERY was not found" in decide(facts).reason


def test_missing_recovery_does_not_stop_a_normal_boot(system: FakeVolumes) -> None:
    system.recovery = False
    flag(system)
    assert decision_for(system)[0] is BootMode.NORMAL


def test_shell_mode() -> None:
    facts = BootFacts(cmdline=parse_cmdline("kiln.mode=shell"), recovery_found=True,
                      erase_requested=True, restore_requested=False,
                      primary=PrimaryState.READY)
    assert decide(facts).mode is BootMode.SHELL


def test_the_line_key_in_mfgurl_never_reaches_the_reason() -> None:
    assert redacted("http://line1:s3cret@10.0.2.2:8080/mfg/line1/manufData.json") == (
        "http://line1:***@10.0.2.2:8080/mfg/line1/manufData.json")
    assert redacted("http://server/m.json") == "http://server/m.json"
