"""The update under way, kept on RECOVERY (`state/update-pending.json`) from just before the
restore is requested until the server has the result: a reboot (the one the update needs, or
a power cut) never loses which action to report, nor what the unit ran before."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kiln.contract import ContractError, parse, to_json
from kiln.fsutil import atomic_write_json, fsync_directory
from recovery.layout import RecoveryLayout

PENDING_FILE = "update-pending.json"


@dataclass(frozen=True, kw_only=True)
class PendingUpdate:
    action_id: int
    image_id: str
    label: str  # "demo 2.0.0 (build 0)"
    previous_image_id: str | None
    previous_label: str
    requested_ns: int


def _path(layout: RecoveryLayout) -> Path:
    return layout.state / PENDING_FILE


def save(layout: RecoveryLayout, update: PendingUpdate) -> None:
    layout.state.mkdir(parents=True, exist_ok=True)
    atomic_write_json(_path(layout), to_json(update), mode=0o600)


def load(layout: RecoveryLayout) -> PendingUpdate | None:
    path = _path(layout)
    try:
        return parse(PendingUpdate, json.loads(path.read_text()), subject=str(path))
    except FileNotFoundError:
        return None
    except (ValueError, ContractError):
        return None  # unreadable: nothing can be reported for it; `clear` removes it


def clear(layout: RecoveryLayout) -> None:
    path = _path(layout)
    if path.exists():
        path.unlink()
        fsync_directory(path.parent)
