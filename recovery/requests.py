"""Requests from the running OS to the next boot of the Kiln ramdisk, and the unit's status.

A request is a JSON file in RECOVERY's `requests/` (`restore.json`, `erase.json`), written
atomically; the ramdisk reads it at the next boot (`initramfs.decide`: an erase request wins
over a restore request) and removes it once done. Rules:

- restore: `keep_data` (default true) keeps DATA as it is; false gives DATA a fresh, empty
  file system in the same restore (a quick re-format, not an erase: use an erase request
  for that).
- erase: destroys PRIMARY and DATA provably (see `erase/`), then the unit restores.
- A restore request may name the image to restore (`image_id`, the update agent's): it is
  restored when it is on RECOVERY, fits, and is not abandoned; otherwise the newest good one.
- `trial` (the update agent's): the image is on trial until the OS confirms its first boot;
  a first boot left unconfirmed gives it up at once and the unit falls back to the image it
  had (`recovery.boots`), without the usual rounds of retries.
- A malformed restore request is read as "restore, keep DATA": the safe reading.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.contract import ContractError, parse, to_json
from kiln.fsutil import atomic_write_json, fsync_directory
from recovery.layout import FLAG_FILE, RecoveryLayout, Request, StateFile
from recovery.store import ImageStore, describe

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RestoreRequest:
    keep_data: bool = True
    requested_ns: int = 0
    reason: str = ""
    image_id: str | None = None
    trial: bool = False


@dataclass(frozen=True, kw_only=True)
class EraseRequest:
    requested_ns: int = 0
    reason: str = ""


def request_restore(layout: RecoveryLayout, *, keep_data: bool, reason: str = "",
                    image_id: str | None = None, trial: bool = False) -> Path:
    path = layout.request_file(Request.RESTORE)
    layout.requests.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, to_json(RestoreRequest(keep_data=keep_data, reason=reason,
                                                   requested_ns=time.time_ns(),
                                                   image_id=image_id, trial=trial)))
    return path


def request_erase(layout: RecoveryLayout, *, reason: str = "") -> Path:
    path = layout.request_file(Request.ERASE)
    layout.requests.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, to_json(EraseRequest(reason=reason, requested_ns=time.time_ns())))
    return path


def cancel(layout: RecoveryLayout, request: Request) -> bool:
    path = layout.request_file(request)
    if not path.exists():
        return False
    path.unlink()
    fsync_directory(path.parent)
    return True


def read_restore_request(layout: RecoveryLayout) -> RestoreRequest | None:
    path = layout.request_file(Request.RESTORE)
    try:
        document = json.loads(path.read_text())
        return parse(RestoreRequest, document, subject=str(path))
    except FileNotFoundError:
        return None
    except (ValueError, ContractError) as e:
        log.warning("%s cannot be read (%s): restoring and keeping DATA", path, e)
        return RestoreRequest()


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status(layout: RecoveryLayout, store: ImageStore, *, root: Path = Path("/")) -> dict[str, Any]:
    """What `kiln status` shows: the unit, the installed image, RECOVERY's images with their
    history, pending requests and the last ramdisk runs."""
    flag = root / FLAG_FILE
    images, _skipped = store.scan()
    records = store.history.records()
    logs = sorted(layout.logs.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if layout.logs.is_dir() else []
    return {
        "identity": _json_file(layout.state_file(StateFile.IDENTITY)),
        "installed": flag.read_text().strip() if flag.is_file() else None,
        "factory_image": store.history.factory_image(),
        "images": [{**describe(image), "history": records[image.image_id].to_json()
                    if image.image_id in records else None} for image in images],
        "quarantined": [{"file": p.name, "reason": r} for p, r in store.quarantined()],
        "requests": {request.value: _json_file(layout.request_file(request))
                     for request in Request if layout.requested(request)},
        "restore_under_way": _json_file(layout.state_file(StateFile.JOURNAL)),
        "erase_under_way": _json_file(layout.state_file(StateFile.ERASE_JOURNAL)),
        "unconfirmed_boots": _json_file(layout.state_file(StateFile.UNCONFIRMED_BOOTS)),
        "erase_certificates": [{"file": path.name, "sent": path.with_suffix(".sent").exists()}
                               for path in sorted(layout.certificates.glob("erase-*.json"))],
        "last_runs": [path.name for path in logs[:5]],
    }
