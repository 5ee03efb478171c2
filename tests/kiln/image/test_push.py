"""`kiln image push` against a real `kiln server` process (plain HTTP and TLS)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from kiln.image.push import PushError, describe_refusal, target_from
from kiln.image.signing import SigningKey
from tests.server.live import LiveServer
from tests.server.signed_images import build_test_image, stored_blobs
from tests.server.tls import make_tls_files


def start_server(tmp_path: Path, signing_dir: Path, *,
                 extra_args: tuple[str, ...] = ()) -> LiveServer:
    data_dir = tmp_path / "srv"
    (data_dir / "keys").mkdir(parents=True)
    (data_dir / "keys" / "test.pub").write_bytes((signing_dir / "test.pub").read_bytes())
    return LiveServer.start(data_dir=data_dir, extra_args=extra_args)


def kiln_push(*args: str, token: str | None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "KILN_TOKEN"}
    if token is not None:
        environment["KILN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "kiln.cli", "image", "push", *args],
                          capture_output=True, text=True, env=environment, timeout=120,
                          check=False)


def scoped_token(server: LiveServer, admin_token: str, *scopes: str) -> str:
    answer = requests.post(f"{server.url}/api/v1/tokens", json={"name": "t", "scopes": scopes},
                           headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


@pytest.mark.allow_commands("python", "tar")
def test_push_stores_once_and_explains_refusals(
        tmp_path: Path, signing_dir: Path, signing_key: SigningKey,
        other_key: SigningKey) -> None:
    path, _ = build_test_image(tmp_path, [signing_key])
    (tmp_path / "other").mkdir()
    untrusted, _ = build_test_image(tmp_path / "other", [other_key])
    with start_server(tmp_path, signing_dir) as server:
        _password, token = server.admin()

        first = kiln_push(str(path), "--server", server.url + "/", token=token)
        assert first.returncode == 0, first.stderr
        shown = json.loads(first.stdout)
        assert (shown["product"], shown["version"], shown["build"]) == ("demo", "1.0.0", 1)
        assert shown["status"] == "stored"
        assert shown["size"] == path.stat().st_size
        again = kiln_push(str(path), "--server", server.url, "--token", token, token=None)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == {**shown, "status": "already stored"}
        listed = requests.get(f"{server.url}/api/v1/images", timeout=10,
                              headers={"Authorization": f"Bearer {token}"}).json()["images"]
        assert [image["id"] for image in listed] == [shown["image_id"]]

        refused = kiln_push(str(untrusted), "--server", server.url, token=token)
        assert refused.returncode == 1
        assert "HTTP 422" in refused.stderr
        assert "none of those keys is trusted" in refused.stderr
        assert other_key.key_id in refused.stderr

        wrong = kiln_push(str(path), "--server", server.url, token="kiln_nope_nope")  # noqa: S106
        assert (wrong.returncode, "HTTP 401" in wrong.stderr) == (1, True), wrong.stderr
        reader = scoped_token(server, token, "units:read")
        forbidden = kiln_push(str(path), "--server", server.url, token=reader)
        assert forbidden.returncode == 1
        assert "HTTP 403: this needs the 'images:write' scope" in forbidden.stderr
        missing = kiln_push(str(path), "--server", server.url, token=None)
        assert (missing.returncode, "KILN_TOKEN" in missing.stderr) == (1, True)
        nothing = kiln_push(str(tmp_path / "nosuch.upd"), "--server", server.url, token=token)
        assert (nothing.returncode, "no such file" in nothing.stderr) == (1, True)
        assert stored_blobs(server.data_dir / "store") == [
            hashlib.sha256(path.read_bytes()).hexdigest()]


@pytest.mark.allow_commands("python", "tar")
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # LiveServer
def test_push_over_tls_checks_the_server(tmp_path: Path, signing_dir: Path,
                                         signing_key: SigningKey) -> None:
    path, _ = build_test_image(tmp_path, [signing_key])
    tls = make_tls_files(tmp_path / "tls")
    with start_server(tmp_path, signing_dir,
                      extra_args=("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
                      ) as server:
        _password, token = server.admin()
        unverified = kiln_push(str(path), "--server", server.url, token=token)
        assert unverified.returncode == 1
        assert "--ca-cert" in unverified.stderr
        pushed = kiln_push(str(path), "--server", server.url, "--ca-cert", str(tls.ca),
                           token=token)
        assert pushed.returncode == 0, pushed.stderr
        assert json.loads(pushed.stdout)["status"] == "stored"


def test_target_checks_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_TOKEN", raising=False)
    token = "kiln_an_example"  # noqa: S105
    with pytest.raises(PushError, match="expected http"):
        target_from("kiln.example", token=token, ca_cert=None)
    with pytest.raises(PushError, match="no API token"):
        target_from("https://kiln.example", token=None, ca_cert=None)
    with pytest.raises(PushError, match="no such file"):
        target_from("https://kiln.example", token=token, ca_cert=tmp_path / "ca.pem")
    monkeypatch.setenv("KILN_TOKEN", "from-env")
    target = target_from("https://kiln.example/", token=None, ca_cert=None)
    assert (target.url, target.token, target.verify) == (
        "https://kiln.example/api/v1/images", "from-env", True)


def test_refusals_are_described_with_every_problem() -> None:
    answer = requests.Response()
    answer.status_code = 422
    answer._content = json.dumps({"detail": "the image's manifest is invalid",
                                  "problems": ["version: bad", "frames: none"]}).encode()
    assert describe_refusal(answer) == ("HTTP 422: the image's manifest is invalid\n"
                                        "  - version: bad\n  - frames: none")
    plain = requests.Response()
    plain.status_code, plain.reason, plain._content = 502, "Bad Gateway", b"<html>proxy</html>"
    assert describe_refusal(plain) == "HTTP 502 Bad Gateway: <html>proxy</html>"
