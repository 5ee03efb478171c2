"""The device's half of hawkBit's DDI, against `{ddi root}/{serial}` with
`Authorization: TargetToken <device token>` (shared/ddi-checklist.md). Answers are parsed
into frozen values; a refusal or a network failure is `ServerError` naming what failed."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import requests

from kiln.errors import KilnError
from kiln.resource import Closing
from kiln.serverclient import send

_SLEEP = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")


class DdiAnswerError(KilnError):
    """The server's answer does not have the shape DDI gives it."""


@dataclass(frozen=True, kw_only=True)
class RootPoll:
    sleep_seconds: int
    links: dict[str, str]  # name → href


@dataclass(frozen=True, kw_only=True)
class Artifact:
    filename: str
    size: int
    sha256: str
    href: str


@dataclass(frozen=True, kw_only=True)
class Deployment:
    action_id: int
    download: str  # skip | attempt | forced
    update: str
    window: str | None  # available | unavailable, when a maintenance window is set
    name: str
    version: str
    artifacts: tuple[Artifact, ...]


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DdiAnswerError(f"{what} is not a JSON object")
    return value


def parse_root(document: Any) -> RootPoll:
    root = _object(document, "the root poll")
    sleep = _object(_object(root.get("config"), "config").get("polling"), "config.polling")
    match = _SLEEP.match(str(sleep.get("sleep", "")))
    if match is None:
        raise DdiAnswerError(f"config.polling.sleep is {sleep.get('sleep')!r}, not HH:MM:SS")
    hours, minutes, seconds = map(int, match.groups())
    links = {name: str(_object(link, f"_links.{name}").get("href", ""))
             for name, link in _object(root.get("_links", {}), "_links").items()}
    return RootPoll(sleep_seconds=hours * 3600 + minutes * 60 + seconds, links=links)


def parse_deployment(document: Any) -> Deployment:
    root = _object(document, "deploymentBase")
    deployment = _object(root.get("deployment"), "deployment")
    chunks = deployment.get("chunks")
    if not isinstance(chunks, list) or len(chunks) != 1:
        raise DdiAnswerError("the deployment must have exactly one chunk (one image)")
    chunk = _object(chunks[0], "the chunk")
    artifacts = []
    for entry in chunk.get("artifacts", []):
        artifact = _object(entry, "an artifact")
        links = _object(artifact.get("_links", {}), "an artifact's _links")
        link = links.get("download") or links.get("download-http")
        hashes = _object(artifact.get("hashes", {}), "an artifact's hashes")
        if not isinstance(link, dict) or not isinstance(artifact.get("size"), int):
            raise DdiAnswerError(f"artifact {artifact.get('filename')!r} has no download "
                                 "link or size")
        artifacts.append(Artifact(filename=str(artifact.get("filename", "")),
                                  size=artifact["size"], sha256=str(hashes.get("sha256", "")),
                                  href=str(link.get("href", ""))))
    try:
        action_id = int(root.get("id", ""))
    except ValueError:
        raise DdiAnswerError(f"the action id {root.get('id')!r} is not a number") from None
    return Deployment(action_id=action_id, download=str(deployment.get("download", "forced")),
                      update=str(deployment.get("update", "forced")),
                      window=deployment.get("maintenanceWindow"),
                      name=str(chunk.get("name", "")), version=str(chunk.get("version", "")),
                      artifacts=tuple(artifacts))


class DdiClient(Closing):
    def __init__(self, controller_url: str, *, token: str, verify: bool | str = True,
                 session: requests.Session | None = None):
        self.controller_url = controller_url.rstrip("/")
        self.verify = verify
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"TargetToken {token}"
        self.session.headers["Accept"] = "application/json"

    def _call(self, method: str, url: str, *, what: str, **options: Any) -> requests.Response:
        trust = self.verify if isinstance(self.verify, str) else "the system's CAs"
        return send(self.session, method, url, what=what, verify=self.verify,
                    trust=str(trust), **options)

    def _json(self, url: str, *, what: str) -> Any:
        answer = self._call("GET", url, what=what)
        try:
            return answer.json()
        except ValueError:
            raise DdiAnswerError(f"{what}: the answer is not JSON") from None

    def poll(self) -> RootPoll:
        return parse_root(self._json(self.controller_url, what="DDI root poll"))

    def config_data(self, attributes: dict[str, str]) -> None:
        self._call("PUT", f"{self.controller_url}/configData", what="DDI configData",
                   json={"mode": "merge", "data": attributes})

    def installed_base(self, *, name: str, version: str) -> None:
        self._call("PUT", f"{self.controller_url}/installedBase", what="DDI installedBase",
                   json={"name": name, "version": version})

    def deployment(self, href: str) -> Deployment:
        return parse_deployment(self._json(href, what="DDI deploymentBase"))

    def confirm(self, href: str, *, details: list[str]) -> int:
        """Consent to the action a `confirmationBase` link names; returns its id."""
        path = href.split("?", 1)[0]
        try:
            action_id = int(path.rsplit("/", 1)[1])
        except ValueError:
            raise DdiAnswerError(f"the confirmation link {href!r} names no action") from None
        self._call("POST", f"{self.controller_url}/confirmationBase/{action_id}/feedback",
                   what=f"DDI confirmation of action {action_id}",
                   json={"confirmation": "confirmed", "details": details})
        return action_id

    def cancel_stop_id(self, href: str) -> int:
        document = _object(self._json(href, what="DDI cancelAction"), "cancelAction")
        cancel = _object(document.get("cancelAction"), "cancelAction.cancelAction")
        return int(cancel.get("stopId", document.get("id", 0)))

    def feedback(self, action_id: int, *, execution: str, finished: str = "none",
                 details: list[str] | None = None, cancel: bool = False) -> None:
        """Report on an action; `ServerError` with status 410 means it has ended."""
        path = "cancelAction" if cancel else "deploymentBase"
        self._call("POST", f"{self.controller_url}/{path}/{action_id}/feedback",
                   what=f"DDI feedback on action {action_id}", json={
                       "id": str(action_id), "timestamp": int(time.time() * 1000),
                       "status": {"execution": execution, "result": {"finished": finished},
                                  "details": details or []}})

    def close(self) -> None:
        self.session.close()

