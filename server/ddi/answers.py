"""The JSON documents DDI answers with (shapes in shared/ddi-checklist.md).

Links are absolute and built from the server's public URL. An http server names its links
`download-http`/`md5sum-http`, an https one `download`/`md5sum`, as hawkBit does.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from server.ddi.model import (
    ActionKind,
    ActionState,
    Handling,
    MaintenanceWindow,
    sleep_text,
)
from server.store import BlobDigests


@dataclass(frozen=True, kw_only=True)
class ControllerBase:
    """Where a controller's resources are: `{base}/{tenant}/controller/v1/{controller}`."""

    base: str
    tenant: str
    controller_id: str

    @property
    def root(self) -> str:
        return (f"{self.base}/{quote(self.tenant, safe='')}/controller/v1/"
                f"{quote(self.controller_id, safe='')}")

    @property
    def secure(self) -> bool:
        return self.base.startswith("https://")

    def link(self, path: str) -> dict[str, str]:
        return {"href": f"{self.root}/{path}"}


@dataclass(frozen=True, kw_only=True)
class Handlings:
    download: Handling
    update: Handling
    window: str | None  # "available" | "unavailable", only when a window is set
    valid_until: float  # when the window next opens or closes (seconds since the epoch)


def handlings(action: Any, *, at_seconds: float) -> Handlings:
    kind = ActionKind(action.kind)
    if not action.maintenance:
        return Handlings(download=kind.download, update=kind.update, window=None,
                         valid_until=float("inf"))
    window = MaintenanceWindow.from_json(json.loads(action.maintenance))
    is_open, changes = window.state(at_seconds)
    return Handlings(download=kind.download,
                     update=kind.update if is_open else Handling.SKIP,
                     window="available" if is_open else "unavailable", valid_until=changes)


def action_hash(action: Any, handling: Handlings) -> str:
    """The `c` parameter: changes whenever what the device should do changes."""
    text = f"{action.id}:{action.kind}:{action.state}:{handling.update}:{handling.window}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]  # noqa: S324 (a change marker)


@dataclass(frozen=True, kw_only=True)
class PollAnswer:
    body: bytes
    etag: str
    valid_until: float  # recompute after this (a maintenance window opens or closes)


def poll_answer(where: ControllerBase, *, target: Any, action: Any,
                polling_seconds: int, at_seconds: float | None = None) -> PollAnswer:
    """The root poll: polling interval and the links to what the device should do next."""
    at = time.time() if at_seconds is None else at_seconds
    links: dict[str, Any] = {}
    valid_until = float("inf")
    if action is not None and action.state == ActionState.CANCELING:
        links["cancelAction"] = where.link(f"cancelAction/{action.id}")
    elif action is not None and action.state == ActionState.WAITING_CONFIRMATION:
        handling = handlings(action, at_seconds=at)
        links["confirmationBase"] = where.link(
            f"confirmationBase/{action.id}?c={action_hash(action, handling)}")
    elif action is not None:
        handling = handlings(action, at_seconds=at)
        valid_until = handling.valid_until
        links["deploymentBase"] = where.link(
            f"deploymentBase/{action.id}?c={action_hash(action, handling)}")
    if target.installed_action_id is not None:
        links["installedBase"] = where.link(f"installedBase/{target.installed_action_id}")
    if target.attributes_requested:
        links["configData"] = where.link("configData")
    document = {"config": {"polling": {"sleep": sleep_text(polling_seconds)}},
                "_links": links}
    body = json.dumps(document, separators=(",", ":")).encode()
    etag = '"' + hashlib.sha1(body).hexdigest() + '"'  # noqa: S324 (an entity tag)
    return PollAnswer(body=body, etag=etag, valid_until=valid_until)


def artifact_document(where: ControllerBase, *, module_id: int, filename: str,
                      digests: BlobDigests) -> dict[str, Any]:
    path = f"softwaremodules/{module_id}/artifacts/{quote(filename, safe='')}"
    suffix = "" if where.secure else "-http"
    return {"filename": filename, "size": digests.size,
            "hashes": {"sha1": digests.sha1, "md5": digests.md5, "sha256": digests.sha256},
            "_links": {f"download{suffix}": where.link(path),
                       f"md5sum{suffix}": where.link(path + ".MD5SUM")}}


def deployment_document(where: ControllerBase, *, action: Any,
                        files: list[dict[str, Any]], messages: list[str] | None,
                        at_seconds: float | None = None,
                        key: str = "deployment") -> dict[str, Any]:
    """deploymentBase (and installedBase; `key` "confirmation" for confirmationBase): the
    action's one chunk and its artifacts."""
    handling = handlings(action, at_seconds=time.time() if at_seconds is None else at_seconds)
    deployment: dict[str, Any] = {"download": handling.download.value,
                                  "update": handling.update.value}
    if handling.window is not None:
        deployment["maintenanceWindow"] = handling.window
    deployment["chunks"] = [{"part": action.module_kind, "version": action.module_version,
                             "name": action.module_name, "artifacts": files}]
    document: dict[str, Any] = {"id": str(action.id), key: deployment}
    if messages is not None:
        document["actionHistory"] = {"status": action.state.upper(), "messages": messages}
    return document


def cancel_document(action_id: int) -> dict[str, Any]:
    return {"id": str(action_id), "cancelAction": {"stopId": str(action_id)}}


def confirmation_overview(where: ControllerBase, *, target: Any,
                          waiting_action: Any) -> dict[str, Any]:
    """confirmationBase: whether the device consents in advance, and what waits."""
    auto: dict[str, Any] = {"active": bool(target.auto_confirm)}
    if target.auto_confirm:
        auto.update({"initiator": target.auto_confirm_by or "",
                     "remark": target.auto_confirm_remark or ""})
    links = {("deactivateAutoConfirm" if target.auto_confirm else "activateAutoConfirm"):
             where.link("confirmationBase/" + ("deactivateAutoConfirm" if target.auto_confirm
                                               else "activateAutoConfirm"))}
    if waiting_action is not None:
        handling = handlings(waiting_action, at_seconds=time.time())
        links["confirmationBase"] = where.link(
            f"confirmationBase/{waiting_action.id}?c={action_hash(waiting_action, handling)}")
    return {"autoConfirm": auto, "_links": links}
