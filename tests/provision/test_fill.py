"""Filling RECOVERY from a real `kiln server`: an image through the image store, a boot file,
the keys and the state, with progress events; wrong hashes and missing files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from kiln.download import DownloadError
from kiln.events import EventRecorder
from kiln.image.errors import SourceError
from kiln.image.signing import TrustStore
from kiln.serverclient import ServerClient, UnitReport
from kiln.shadow import verify
from provision.credentials import store_credentials
from provision.fill import Identity, fill_recovery, install_keys, write_state
from recovery.layout import RecoveryLayout, StateFile
from recovery.store import ImageStore
from tests.provision.serverline import Line

pytestmark = pytest.mark.allow_commands("python", "tar")


def _fill(line: Line, mfgurl: str, root: Path, trust: TrustStore) -> tuple[list[Path],
                                                                           EventRecorder]:
    recorder = EventRecorder(serial="SN-FILL", spool_dir=root / "spool")
    with ServerClient(mfgurl) as client:
        manufdata = client.manufdata()
        placed = fill_recovery(manufdata, client=client, layout=RecoveryLayout(root / "rec"),
                               trust=trust, recorder=recorder)
    return placed, recorder


def test_recovery_is_filled_and_verified(line: Line, tmp_path: Path, trust: TrustStore,
                                         signing_dir: Path) -> None:
    mfgurl = line.profile([line.image_spec(), line.kernel_spec()])
    placed, recorder = _fill(line, mfgurl, tmp_path, trust)
    layout = RecoveryLayout(tmp_path / "rec")
    assert (layout.root / "boot" / "vmlinuz").read_bytes() == line.kernel
    store = ImageStore(layout.root, trust)
    [image] = store.images()
    assert image.image_id == line.image_id and image.path in placed
    assert image.path.read_bytes() == line.image.read_bytes()
    assert not list(layout.root.rglob("*.partial"))
    kinds = [(event.type.value, event.name) for event in recorder.spool.events()]
    assert ("finish", "manufacture/recovery/boot/vmlinuz") in kinds
    progress = [event for event in recorder.spool.events() if event.type.value == "progress"]
    assert progress and all(event.total for event in progress)
    assert any("/s" in event.message for event in progress)  # the rate and time left

    install_keys(signing_dir, layout)
    assert sorted(path.name for path in layout.keys.iterdir()) == ["other.pub", "test.pub"]
    with ServerClient(mfgurl) as client:
        manufdata = client.manufdata()
    write_state(layout, identity=Identity(serial="SN-FILL", variant="edge-100",
                                          profile_url=client.manufdata_url, run_id="r1",
                                          manufactured_ns=1),
                manufdata=manufdata)
    assert json.loads((layout.state / "identity.json").read_text())["serial"] == "SN-FILL"
    assert "line1:" not in (layout.state / "identity.json").read_text()
    assert json.loads((layout.state / "server.json").read_text())["events_url"].endswith(
        "/api/v1/events")

    again, _ = _fill(line, mfgurl, tmp_path, trust)  # a re-run finds everything in place
    assert sorted(again) == sorted(placed)


def test_a_wrong_sha256_in_manufdata_is_refused(line: Line, tmp_path: Path,
                                                trust: TrustStore) -> None:
    mfgurl = line.profile([line.image_spec(), line.kernel_spec(sha256="0" * 64)])
    with pytest.raises(DownloadError, match="sha256"):
        _fill(line, mfgurl, tmp_path, trust)
    assert not (tmp_path / "rec" / "boot" / "vmlinuz").exists()
    assert not list((tmp_path / "rec").rglob("*.partial"))


def test_an_image_that_is_not_the_one_manufdata_names_is_refused(
        line: Line, tmp_path: Path, trust: TrustStore) -> None:
    mfgurl = line.profile([line.image_spec(sha256="1" * 64)])
    with pytest.raises(DownloadError, match="manufData says"):
        _fill(line, mfgurl, tmp_path, trust)
    assert ImageStore(tmp_path / "rec", trust).images() == []


def test_a_missing_file_is_named(line: Line, tmp_path: Path, trust: TrustStore) -> None:
    mfgurl = line.profile([line.image_spec(), line.kernel_spec(url="files/nope")])
    with pytest.raises(SourceError, match="404"):
        _fill(line, mfgurl, tmp_path, trust)


def test_credentials_reach_recovery_as_a_hash_and_a_root_only_token(
        line: Line, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mfgurl = line.profile([line.image_spec()])
    layout = RecoveryLayout(tmp_path / "rec")
    recorder = EventRecorder(serial="SN-CRED", spool_dir=tmp_path / "spool")
    with ServerClient(mfgurl) as client:
        client.manufdata()
        client.report_unit(UnitReport(serial="SN-CRED", variant="edge-100", dmi={}, macs=[],
                                      hardware={}))
        recorder.start("manufacture")
        recorder.spool.flush(client.send_events)
        store_credentials(client, serial="SN-CRED", layout=layout)
    revealed = requests.post(f"{line.server.url}/api/v1/units/SN-CRED/credentials/reveal",
                             headers=line.headers(), timeout=30).json()["admin_password"]
    hashed = layout.state_file(StateFile.ADMIN_HASH).read_text().strip()
    assert hashed.startswith("$6$") and verify(revealed, hashed)
    token = layout.state_file(StateFile.DEVICE_TOKEN).read_text()
    assert token.startswith("kilndev_")
    for name in (StateFile.ADMIN_HASH, StateFile.DEVICE_TOKEN):
        assert layout.state_file(name).stat().st_mode & 0o777 == 0o600
    everything = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    assert revealed.encode() not in everything  # nowhere on RECOVERY, nor in the spool
    assert revealed not in caplog.text
