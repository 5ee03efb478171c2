"""Normal boots the OS has not confirmed: an image that cannot boot is given up.

The ramdisk counts every hand-over to the OS in RECOVERY's `state/unconfirmed-boots.json`
(with the image restore installed, `state/installed.json`); the OS confirms that it came up
by removing the file — `kiln boot-done`, run by the Kiln agent or the OS's own boot, or
`rm` where there is no Python. When the count reaches `BOOT_LIMIT`, the next boot restores
instead (`initramfs.decide`), and the restore records a failed attempt for the image that
did not boot: after `history.DEFAULT_FAILURE_LIMIT` such rounds the image is abandoned and
the next older one is restored. An OS image must therefore confirm its boots.

An image installed on trial (an update: `RestoreRequest.trial`) gets one boot: left
unconfirmed, it is given up at the next boot and abandoned at once (`TRIAL_BOOT_LIMIT`), so
the unit is back on its previous image after one restore instead of several rounds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kiln.fsutil import atomic_write_json, fsync_directory
from recovery.layout import RecoveryLayout, StateFile

BOOT_LIMIT = 3
TRIAL_BOOT_LIMIT = 1


@dataclass(frozen=True, kw_only=True)
class Installed:
    image_id: str
    label: str
    trial: bool = False


@dataclass(frozen=True, kw_only=True)
class Unconfirmed:
    count: int
    image_id: str | None
    label: str
    trial: bool = False

    @property
    def limit(self) -> int:
        return TRIAL_BOOT_LIMIT if self.trial else BOOT_LIMIT

    @property
    def given_up(self) -> bool:
        return self.count >= self.limit


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        found = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def record_installed(layout: RecoveryLayout, *, image_id: str, label: str,
                     trial: bool = False) -> None:
    """A restore finished: this image is on PRIMARY, and no boot of it is counted yet."""
    atomic_write_json(layout.state_file(StateFile.INSTALLED),
                      {"image_id": image_id, "label": label, "trial": trial})
    confirm(layout)


def installed(layout: RecoveryLayout) -> Installed | None:
    found = _read_json(layout.state_file(StateFile.INSTALLED))
    if not found or not isinstance(found.get("image_id"), str):
        return None
    return Installed(image_id=str(found["image_id"]), label=str(found.get("label", "")),
                     trial=found.get("trial") is True)


def unconfirmed(layout: RecoveryLayout) -> Unconfirmed | None:
    found = _read_json(layout.state_file(StateFile.UNCONFIRMED_BOOTS))
    if not found:
        return None
    count = found.get("count")
    image_id = found.get("image_id")
    return Unconfirmed(count=count if isinstance(count, int) else 0,
                       image_id=image_id if isinstance(image_id, str) else None,
                       label=str(found.get("label", "")), trial=found.get("trial") is True)


def count_handover(layout: RecoveryLayout, *, label: str) -> Unconfirmed:
    """Count this hand-over to the OS (written durably before `switch_root`)."""
    before = unconfirmed(layout)
    image = installed(layout)
    now = Unconfirmed(count=(before.count if before else 0) + 1,
                      image_id=image.image_id if image else None, label=label,
                      trial=bool(image and image.trial))
    atomic_write_json(layout.state_file(StateFile.UNCONFIRMED_BOOTS),
                      {"count": now.count, "image_id": now.image_id, "label": now.label,
                       "trial": now.trial})
    return now


def confirm(layout: RecoveryLayout) -> bool:
    """The OS is up: forget the count. False when nothing was counted."""
    path = layout.state_file(StateFile.UNCONFIRMED_BOOTS)
    if not path.exists():
        return False
    path.unlink()
    fsync_directory(path.parent)
    return True
