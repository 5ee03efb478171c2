"""Requests from the OS (`kiln request …`) and `kiln status`, on a RECOVERY directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.image.signing import TrustStore
from recovery.layout import FLAG_FILE, RecoveryLayout, Request, StateFile
from recovery.requests import (
    RestoreRequest,
    cancel,
    read_restore_request,
    request_erase,
    request_restore,
)
from recovery.store import ImageStore
from tests.recovery.conftest import MakeImage

pytestmark = pytest.mark.allow_commands("tar")


@pytest.fixture
def layout(tmp_path: Path) -> RecoveryLayout:
    layout = RecoveryLayout(tmp_path / "recovery")
    layout.state.mkdir(parents=True)
    return layout


def test_requests_are_written_read_and_withdrawn(layout: RecoveryLayout) -> None:
    assert read_restore_request(layout) is None
    request_restore(layout, keep_data=False, reason="support ticket 7")
    found = read_restore_request(layout)
    assert found is not None and not found.keep_data and found.reason == "support ticket 7"
    assert found.requested_ns > 0
    request_erase(layout)
    assert layout.requested(Request.ERASE)
    assert cancel(layout, Request.ERASE) and not cancel(layout, Request.ERASE)
    layout.request_file(Request.RESTORE).write_text("{not json")
    assert read_restore_request(layout) == RestoreRequest()  # the safe reading: keep DATA


def test_the_commands(layout: RecoveryLayout, capsys: pytest.CaptureFixture[str]) -> None:
    recovery = str(layout.root)
    assert main(["request", "restore", "--wipe-data", "--recovery", recovery]) == 0
    assert "fresh, empty file system" in capsys.readouterr().out
    assert json.loads(layout.request_file(Request.RESTORE).read_text())["keep_data"] is False
    assert main(["request", "restore", "--recovery", recovery]) == 0
    assert json.loads(layout.request_file(Request.RESTORE).read_text())["keep_data"] is True
    with pytest.raises(SystemExit) as refused:
        main(["request", "erase", "--recovery", recovery])  # --yes is required
    assert refused.value.code == 2 and not layout.requested(Request.ERASE)
    assert main(["request", "erase", "--yes", "--recovery", recovery]) == 0
    assert layout.requested(Request.ERASE)
    assert main(["request", "cancel", "erase", "--recovery", recovery]) == 0
    assert "withdrawn" in capsys.readouterr().out
    assert main(["request", "restore", "--recovery", str(layout.root / "nowhere")]) == 2
    assert "not a RECOVERY volume" in capsys.readouterr().err


def test_status_shows_the_unit_its_images_and_requests(
        layout: RecoveryLayout, make_image: MakeImage, trust: TrustStore, signing_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    layout.state_file(StateFile.IDENTITY).write_text(json.dumps({"serial": "SN9"}))
    store = ImageStore(layout.root, trust)
    image = store.add(make_image("2.0.0"))
    store.history.begin_attempt(image.image_id)
    store.history.finish_attempt(image.image_id, succeeded=True)
    request_restore(layout, keep_data=True)
    root = layout.root.parent / "os"
    root.mkdir()
    (root / FLAG_FILE).write_text("demo 2.0.0 (build 0)\n")
    layout.keys.mkdir()
    (layout.keys / "test.pub").write_bytes((signing_dir / "test.pub").read_bytes())
    assert main(["status", "--recovery", str(layout.root), "--root", str(root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["identity"] == {"serial": "SN9"}
    assert shown["installed"] == "demo 2.0.0 (build 0)"
    [listed] = shown["images"]
    assert listed["version"] == "2.0.0" and listed["history"]["successes"] == 1
    assert shown["requests"]["restore"]["keep_data"] is True
    assert shown["restore_under_way"] is None
