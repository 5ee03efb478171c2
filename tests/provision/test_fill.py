"""Filling RECOVERY from a real `kiln server`: an image through the image store, a boot file,
the keys and the state, with progress events; wrong hashes and missing files refused."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from kiln.download import DownloadError
from kiln.events import EventRecorder
from kiln.image.errors import SourceError
from kiln.image.signing import SigningKey, TrustStore
from kiln.serverclient import ServerClient, UnitReport
from kiln.shadow import verify
from provision.credentials import ADMIN_HASH_FILE, DEVICE_TOKEN_FILE, store_credentials
from provision.fill import Identity, fill_recovery, install_keys, write_state
from recovery.layout import RecoveryLayout
from recovery.store import ImageStore
from tests.server.conftest import example_manufdata
from tests.server.live import LiveServer
from tests.server.signed_images import build_test_image

pytestmark = pytest.mark.allow_commands("python", "tar")


@dataclass(frozen=True)
class Line:
    server: LiveServer
    token: str
    image_id: str
    image: Path
    kernel: bytes

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def profile(self, files: list[dict[str, Any]]) -> str:
        """Make (or replace) profile `line1` naming `files`; return its mfgurl."""
        manufdata = example_manufdata() | {"files": files}
        answer = requests.put(f"{self.server.url}/api/v1/profiles/line1", headers=self.headers(),
                              json={"manufdata": manufdata}, timeout=30)
        assert answer.ok, answer.text
        key = requests.post(f"{self.server.url}/api/v1/profiles/line1/line-key",
                            headers=self.headers(), timeout=30).json()["line_key"]
        return self.server.url.replace("://", f"://line1:{key}@") + "/mfg/line1/manufData.json"

    def image_spec(self, **changes: Any) -> dict[str, Any]:
        data = self.image.read_bytes()
        return {"url": f"images/{self.image_id}.upd", "sha256": hashlib.sha256(data).hexdigest(),
                "size_bytes": len(data), "destination": "Image/demo-1.0.0.upd",
                "kind": "image"} | changes

    def kernel_spec(self, **changes: Any) -> dict[str, Any]:
        return {"url": "files/vmlinuz", "sha256": hashlib.sha256(self.kernel).hexdigest(),
                "size_bytes": len(self.kernel), "destination": "boot/vmlinuz",
                "kind": "other"} | changes


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey,
         signing_dir: Path) -> Iterator[Line]:
    work = tmp_path_factory.mktemp("fill")
    image, _manifest = build_test_image(work, [signing_key])
    server = LiveServer(data_dir=work / "server")
    server.trust(signing_dir / "test.pub")
    server.run()
    with server:
        _password, token = server.admin()
        image_id = server.push_image(token, image)
        kernel = os.urandom(3 * 1024 * 1024 + 17)
        server.put_file(token, "vmlinuz", kernel)
        yield Line(server, token, image_id, image, kernel)


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
    hashed = (layout.state / ADMIN_HASH_FILE).read_text().strip()
    assert hashed.startswith("$6$") and verify(revealed, hashed)
    token = (layout.state / DEVICE_TOKEN_FILE).read_text()
    assert token.startswith("kilndev_")
    for name in (ADMIN_HASH_FILE, DEVICE_TOKEN_FILE):
        assert (layout.state / name).stat().st_mode & 0o777 == 0o600
    everything = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    assert revealed.encode() not in everything  # nowhere on RECOVERY, nor in the spool
    assert revealed not in caplog.text
