"""`kiln lab demo`'s own logic: which console lines and server events it shows, what the
server's unit record must say, the summary, and the demo OS it builds (a real signed image
with a real busybox). The whole demo runs in QEMU in test_demo_qemu.py."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from kiln.cli import main
from kiln.image.reader import ImageReader
from kiln.image.signing import SigningKey, TrustStore
from lab.demo import DemoOptions, run_demo
from lab.demo_os import DEMO_OS_INIT, DemoOsError, build_demo_image, make_demo_root, parse_os_line
from lab.demo_report import (
    Outcome,
    StepRecord,
    console_key_line,
    event_line,
    manufacture_seconds,
    parse_admin,
    record_problems,
    summary_table,
)

# Lines as the consoles of a manufacture, a restore and a normal boot show them.
CONSOLE = """\
Kiln: manufacturing with profile demo
[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian
[   11.100] kiln: network: enp0s2 has 10.0.2.15/24 (router 10.0.2.2) after 0.2 s
[   10.040] kiln: Kiln ramdisk started (run 24536483e808) at 10.040 s
[    8.380] kiln: + /lib/systemd/systemd-udevd --daemon --resolve-names=never
[   13.510] kiln: decision: restore (no PRIMARY partition (no partition has LABEL=PRIMARY))
[   11.390] kiln: manufacture: partition: partition and format the disk(s)
[   14.180] kiln: restore: demo 1.0.0 (build 1) onto /dev/vda2
[   15.280] kiln: restore succeeded: demo 1.0.0 (build 1) restored in 1.5 s; rebooting in 3 s
[   16.300] kiln: normal boot: handing over to LABEL=PRIMARY's /sbin/init
Kiln demo OS 1.0.0 is up as pid 1 on kiln-demo-0001
KILN-DEMO-OS: version 1.0.0 host kiln-demo-0001 machine-id 07c8732f4ce84c53a1537dfe66dbdcb1 pid 1
[   17.395048] ACPI: PM: Preparing to enter system sleep state S5
"""


def test_the_console_lines_shown_are_the_boot_s_milestones() -> None:
    shown = [text for line in CONSOLE.splitlines() if (text := console_key_line(line))]
    assert shown == [
        "Kiln: manufacturing with profile demo",
        "kernel 6.1.0-56-amd64 starting",
        "kiln: network: enp0s2 has 10.0.2.15/24 (router 10.0.2.2) after 0.2 s",
        "kiln: decision: restore (no PRIMARY partition (no partition has LABEL=PRIMARY))",
        "kiln: restore: demo 1.0.0 (build 1) onto /dev/vda2",
        "kiln: restore succeeded: demo 1.0.0 (build 1) restored in 1.5 s; rebooting in 3 s",
        "kiln: normal boot: handing over to LABEL=PRIMARY's /sbin/init",
        "Kiln demo OS 1.0.0 is up as pid 1 on kiln-demo-0001",
    ]


def test_failures_on_the_console_are_shown() -> None:
    assert console_key_line("[ 20.1] kiln: manufacture failed: validate: memory 768 MiB") == \
        "kiln: manufacture failed: validate: memory 768 MiB"
    assert console_key_line("[ 3.2] Kernel panic - not syncing: Attempted to kill init!") == \
        "Kernel panic - not syncing: Attempted to kill init!"


def _event(kind: str, name: str, message: str = "", **more: Any) -> dict[str, Any]:
    return {"id": 1, "type": kind, "name": name, "message": message} | more


def test_events_shown_are_starts_failures_and_the_run_s_end() -> None:
    assert event_line(_event("start", "manufacture/partition", "partition the disk(s)")) == \
        "manufacture/partition: partition the disk(s)"
    assert event_line(_event("finish", "manufacture/partition", "bios: /dev/vda msdos",
                             result="success")) is None
    assert event_line(_event("finish", "manufacture/validate", "memory 768 MiB",
                             result="fail")) == "manufacture/validate: fail — memory 768 MiB"
    assert event_line(_event("finish", "manufacture", "in 13 s", result="success")) == \
        "manufacture: success — in 13 s"
    assert event_line(_event("progress", "manufacture/recovery", done=1, total=2)) is None
    assert event_line(_event("log", "manufacture/hooks", "a hook said hi", level="info")) is None
    assert event_line(_event("log", "manufacture/hooks", "disk is slow", level="warning")) == \
        "manufacture/hooks: warning: disk is slow"


def _record(**changes: Any) -> dict[str, Any]:
    record = {"serial": "KILN-DEMO-0001", "profile": "demo", "variant": "qemu-lab",
              "lifecycle": "manufacture", "status": "succeeded", "failure": None,
              "manufactured_ns": 2_000_000_000_000, "credential_escrowed": True,
              "runs": [{"run_id": "r1", "kind": "manufacture", "status": "succeeded",
                        "failure": None, "started_ns": 1_000_000_000,
                        "finished_ns": 13_500_000_000}]}
    return record | changes


def test_a_good_record_has_no_problems_and_gives_the_unit_s_own_time() -> None:
    record = _record()
    assert record_problems(record, serial="KILN-DEMO-0001", profile="demo",
                           variant="qemu-lab") == []
    assert manufacture_seconds(record) == 12.5


def test_a_record_that_disagrees_with_the_console_is_named() -> None:
    record = _record(status="failed", credential_escrowed=False, runs=[
        {"kind": "manufacture", "status": "failed", "failure": "validate: memory"}])
    problems = record_problems(record, serial="KILN-DEMO-0001", profile="demo",
                               variant="qemu-lab")
    assert problems == ["status is 'failed', expected 'succeeded'",
                        "the latest manufacture run is 'failed': validate: memory",
                        "no admin password escrowed"]
    assert manufacture_seconds(record) is None
    assert record_problems(_record(runs=[]), serial="KILN-DEMO-0001", profile="demo",
                           variant="qemu-lab") == ["no manufacture run recorded"]


def test_create_admin_s_output_gives_the_password_and_token() -> None:
    output = ("admin operator: demo\n"
              "one-time password (web UI login; shown only now): pw-123\n"
              "API token (Authorization: Bearer …; shown only now): kiln_abc\n")
    assert parse_admin(output) == ("pw-123", "kiln_abc")
    with pytest.raises(ValueError, match="no password and token"):
        parse_admin("admin operator: demo\n")


def test_the_summary_lists_every_step_with_its_time_and_evidence() -> None:
    table = summary_table([
        StepRecord(title="Kiln ramdisk", outcome=Outcome.OK, seconds=6.1,
                   detail="reused: inputs unchanged"),
        StepRecord(title="manufacture (PXE)", outcome=Outcome.FAILED, seconds=125.0,
                   detail="the unit says: manufacture failed"),
        StepRecord(title="first restore", outcome=Outcome.NOT_RUN),
    ]).splitlines()
    assert table[0].split() == ["step", "time", "result", "evidence"]
    assert table[1].split() == ["Kiln", "ramdisk", "6.1", "s", "ok", "reused:", "inputs",
                                "unchanged"]
    assert "2:05 min  FAILED   the unit says: manufacture failed" in table[2]
    assert table[3].split() == ["first", "restore", "-", "not", "run"]


def test_the_demo_os_marker_line_parses() -> None:
    report = parse_os_line("junk\nKILN-DEMO-OS: version 1.0.0 host kiln-demo-0001 machine-id "
                           "07c8732f4ce84c53a1537dfe66dbdcb1 pid 1\r\n")
    assert report is not None
    assert (report.version, report.hostname, report.pid) == ("1.0.0", "kiln-demo-0001", 1)
    assert report.machine_id == "07c8732f4ce84c53a1537dfe66dbdcb1"
    assert parse_os_line("KILN-DEMO-OS: version 1.0.0 host") is None
    assert "KILN-DEMO-OS: version" in DEMO_OS_INIT  # the init prints what the parser reads


def test_the_demo_os_needs_a_static_busybox(tmp_path: Path) -> None:
    with pytest.raises(DemoOsError, match="busybox-static"):
        make_demo_root(tmp_path / "root", version="1.0.0", busybox=tmp_path / "missing")
    dynamic = tmp_path / "busybox"
    dynamic.write_bytes(b"\x7fELF" + b"\0" * 500 + b"/lib64/ld-linux-x86-64.so.2\0")
    with pytest.raises(DemoOsError, match="linked dynamically"):
        make_demo_root(tmp_path / "root", version="1.0.0", busybox=dynamic)


@pytest.mark.allow_commands("tar")
def test_the_demo_os_image_is_signed_and_holds_an_init_restore_can_configure(
        tmp_path: Path, signing_key: SigningKey, trust: TrustStore) -> None:
    image = build_demo_image(tmp_path, key=signing_key, product="demo", version="2.0.1",
                             variant="qemu-lab")
    with ImageReader.open(image, trust) as reader:
        reader.verify()
        manifest = reader.manifest
    assert (manifest.product, manifest.version, manifest.variants) == \
        ("demo", "2.0.1", ("qemu-lab",))
    with image.open("rb") as handle, zstandard.ZstdDecompressor().stream_reader(
            handle, read_across_frames=True) as stream, tarfile.open(fileobj=stream,
                                                                     mode="r|") as tar:
        members = {member.name.removeprefix("./"): member for member in tar}
    assert members["sbin/init"].mode & 0o111
    assert members["bin/busybox"].size > 500_000
    for name in ("etc/shadow", "etc/kiln-demo-version", "etc/os-release", "proc", "dev"):
        assert name in members, name


def test_the_demo_command_refuses_a_serial_it_cannot_use_as_a_hostname(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["lab", "demo", "--serial", "unit 1/2"])
    assert exited.value.code == 2
    assert "letters, digits and '-'" in capsys.readouterr().err


def test_a_failed_step_stops_the_demo_names_it_and_keeps_the_scratch_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_LAB_ACCEL", "tcg")  # no KVM probe: this test boots nothing
    out = io.StringIO()
    scratch = tmp_path / "scratch"
    status = run_demo(DemoOptions(cache=tmp_path / "cache", scratch=scratch,
                                  key=tmp_path / "missing.key"), out=out)
    text = out.getvalue()
    assert status == 1
    assert f"step 'signing key' failed: {tmp_path / 'missing.key'} is missing" in text
    assert f"Kept the scratch directory {scratch}" in text
    summary = text.split("== Summary", 1)[1].splitlines()
    assert "FAILED" in summary[2] and "signing key" in summary[2]
    assert all(line.split()[-2:] == ["not", "run"] for line in summary[3:10]), summary
    assert scratch.is_dir()
