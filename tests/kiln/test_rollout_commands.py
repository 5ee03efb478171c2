"""`kiln rollout …` against a real server: make a rollout, start it, follow it, step it,
read its failures; and a refusal that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from kiln.cli import main
from tests.server.live import LiveServer

pytestmark = pytest.mark.allow_commands("python")


def test_an_operator_runs_a_rollout_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with LiveServer.start(data_dir=tmp_path / "server") as server:
        _password, token = server.admin()
        monkeypatch.setenv("KILN_TOKEN", token)
        api = f"{server.url}/api/v1/tenants/default"
        headers = {"Authorization": f"Bearer {token}"}
        devices = requests.post(f"{api}/targets", headers=headers, timeout=10, json={
            "targets": [{"controller_id": f"dev-{n}"} for n in range(3)]}).json()["targets"]
        module = requests.post(f"{api}/softwaremodules", headers=headers, timeout=10,
                               json={"name": "fw", "version": "2"}).json()["id"]

        def kiln(*words: str) -> dict[str, object]:
            assert main([*words[:2], "--server", server.url, *words[2:]]) == 0
            document: dict[str, object] = json.loads(capsys.readouterr().out)
            return document

        made = kiln("rollout", "create", "--name", "cli", "--module", str(module),
                    "--wave", "1", "--wave", "100%", "--error", "50", "--device", "dev-0",
                    "--device", "dev-2")
        assert made["targets"] == 2 and made["state"] == "ready"
        rollout = str(made["id"])
        assert kiln("rollout", "start", rollout)["state"] == "running"
        first = devices[0]
        controller = f"{server.url}/default/controller/v1/dev-0"
        auth = {"Authorization": f"TargetToken {first['target_token']}"}
        href = requests.get(controller, headers=auth, timeout=10).json()["_links"][
            "deploymentBase"]["href"]
        requests.post(href.split("?")[0] + "/feedback", headers=auth, timeout=10, json={
            "status": {"execution": "closed", "result": {"finished": "failure"},
                       "details": ["flash worn out"]}})
        shown = kiln("rollout", "show", rollout)
        assert shown["state"] == "paused"
        failures = kiln("rollout", "failures", rollout)["failures"]
        assert isinstance(failures, list) and failures[0]["last_message"] == "flash worn out"
        assert kiln("rollout", "next-wave", rollout)["current_wave"] == 2
        assert kiln("rollout", "cancel", rollout)["state"] == "canceled"
        listed = kiln("rollout", "list")["rollouts"]
        assert isinstance(listed, list) and len(listed) == 1
        assert main(["rollout", "resume", "--server", server.url, rollout]) == 1
        assert "rollout 1 has ended (canceled)" in capsys.readouterr().err
