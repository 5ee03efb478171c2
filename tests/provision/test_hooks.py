"""Before the first write and at the hook points, against a real `kiln server`: the preflight
lists every file that cannot be had; hook scripts are fetched, verified and run with their
exit-status policy."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from kiln.events import Event, EventRecorder, EventType, Result
from kiln.manufdata import HookPoint
from kiln.serverclient import ServerClient
from provision.hooks import HookContext, HookError, run_hooks
from provision.preflight import PreflightError, check_sources
from tests.provision.serverline import Line

pytestmark = pytest.mark.allow_commands("python", "tar", "script")


def test_every_file_that_cannot_be_had_is_listed_before_anything_is_written(
        line: Line) -> None:
    good = line.profile([line.image_spec(), line.kernel_spec()])
    with ServerClient(good) as client:
        assert check_sources(client, client.manufdata(), variant="edge-100") == 2

    bad = line.profile([line.image_spec(sha256="1" * 64),
                        line.kernel_spec(size_bytes=12345, destination="boot/k2"),
                        line.kernel_spec(url="files/missing", destination="boot/k3")])
    with ServerClient(bad) as client:
        manufdata = client.manufdata()
        with pytest.raises(PreflightError) as caught:
            check_sources(client, manufdata, variant="edge-100")
    message = str(caught.value)
    assert message.startswith("3 of 3 file(s)")
    assert f"has sha256 {hashlib.sha256(line.image.read_bytes()).hexdigest()}" in message
    assert "files[1] boot/k2" in message and "manufData says 12345" in message
    assert "files[2] boot/k3" in message and "404" in message
    assert ":" + line.server.url.split(":")[-1] in message  # the URL, without the line key
    assert "line1:" not in message


def _hook(line: Line, name: str, script: str, **changes: Any) -> dict[str, Any]:
    data = script.encode()
    line.server.put_file(line.token, f"{name}.sh", data)
    return {"point": "after_validate", "name": name, "url": f"files/{name}.sh",
            "sha256": hashlib.sha256(data).hexdigest(), "timeout_seconds": 30} | changes


def _run(line: Line, hooks: list[dict[str, Any]], tmp_path: Path, *,
         point: HookPoint = HookPoint.AFTER_VALIDATE) -> tuple[int, list[Event]]:
    mfgurl = line.profile([line.image_spec()], hooks=hooks)
    recorder = EventRecorder(serial="SN-HOOK", spool_dir=tmp_path / "spool")
    with ServerClient(mfgurl) as client:
        manufdata = client.manufdata()
        context = HookContext(client=client, recorder=recorder, work=tmp_path / "work",
                              serial="SN-HOOK", variant="edge-100", product=manufdata.product,
                              recovery=tmp_path / "rec")
        try:
            ran = run_hooks(manufdata, point, context)
        finally:
            events = list(recorder.spool.events())
    return ran, events


def _finished(events: list[Event]) -> dict[str, Event]:
    return {event.name: event for event in events if event.type is EventType.FINISH}


def test_hooks_run_in_order_with_the_units_facts_and_their_output_is_kept(
        line: Line, tmp_path: Path) -> None:
    hooks = [
        _hook(line, "facts", "#!/bin/sh\necho \"serial=$KILN_SERIAL variant=$KILN_VARIANT "
                             "point=$KILN_HOOK_POINT rec=$KILN_RECOVERY\"\n"
                             "env > seen-env\necho to-stderr >&2\n"),
        _hook(line, "flaky", "#!/bin/sh\necho label printer offline\nexit 3\n",
              on_failure="warn"),
        _hook(line, "other-variant", "#!/bin/sh\nexit 1\n", variants=["edge-200"]),
        _hook(line, "later", "#!/bin/sh\nexit 1\n", point="before_reboot"),
    ]
    ran, events = _run(line, hooks, tmp_path)
    assert ran == 2
    finished = _finished(events)
    assert finished["manufacture/hooks/facts"].result is Result.SUCCESS
    assert finished["manufacture/hooks/flaky"].result is Result.WARN
    assert "exited with status 3" in finished["manufacture/hooks/flaky"].message
    assert "manufacture/hooks/other-variant" not in finished
    assert "manufacture/hooks/later" not in finished
    logs = [event.message for event in events if event.type is EventType.LOG]
    assert f"serial=SN-HOOK variant=edge-100 point=after_validate rec={tmp_path / 'rec'}" \
        in logs[0]
    assert "to-stderr" in logs[0] and "label printer offline" in logs[1]
    env = (tmp_path / "work/hooks/facts/seen-env").read_text()
    assert "line1" not in env and "KILN_RUN_ID=" in env  # never the line's credentials


@pytest.mark.parametrize(("script", "changes", "why"), [
    ("#!/bin/sh\nexit 1\n", {}, "exited with status 1"),
    ("#!/bin/sh\nsleep 30\n", {"timeout_seconds": 1}, "did not finish within 1 s"),
    ("echo no interpreter line\n", {}, "a script needs a #! line"),
    ("#!/bin/sh\nexit 0\n", {"sha256": "2" * 64}, "cannot fetch it"),
])
def test_a_failing_hook_fails_the_manufacture_by_default(
        line: Line, tmp_path: Path, script: str, changes: dict[str, Any], why: str) -> None:
    hooks = [_hook(line, "burn-in", script, **changes),
             _hook(line, "never", "#!/bin/sh\nexit 0\n")]
    with pytest.raises(HookError, match=why):
        _run(line, hooks, tmp_path)
    assert not (tmp_path / "work/hooks/never").exists()  # the run stops at the failure
