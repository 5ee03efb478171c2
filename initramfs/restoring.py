"""The ramdisk's factory restore: RECOVERY and the unit's state in, `recovery.restore` run,
a verdict out. Never raises.

- Images are trusted by the ramdisk's own keys (`/etc/kiln/keys`, built in), not RECOVERY's
  `keys/`: RECOVERY is writable from the running OS.
- The serial and variant come from RECOVERY's `state/identity.json`.
- Events are spooled in RECOVERY's `log/` (the restore path brings no network up); they go to
  the server with a later flush.
- No good image left: the console says why, and the pause before the next reboot grows with
  each such boot in a row (`state/no-image-boots`), from 30 s to 10 minutes — never a tight
  reboot loop.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.events import EventRecorder, Result
from kiln.fsutil import atomic_write_bytes
from kiln.image.signing import PUBLIC_KEY_SUFFIXES, TrustStore
from recovery.layout import RecoveryLayout, StateFile
from recovery.restore import find_target, restore
from recovery.store import NoGoodImageError

log = logging.getLogger(__name__)

TOP = "restore"
NO_IMAGE_FILE = "no-image-boots"
FIRST_NO_IMAGE_PAUSE = 30.0
MAX_NO_IMAGE_PAUSE = 600.0


@dataclass(frozen=True, kw_only=True)
class RestoreVerdict:
    ok: bool
    message: str
    pause_seconds: float


def no_image_pause(layout: RecoveryLayout) -> float:
    """Count this boot without an image; the pause before the next reboot."""
    path = layout.state / NO_IMAGE_FILE
    try:
        boots = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        boots = 0
    atomic_write_bytes(path, f"{boots + 1}\n".encode())
    return float(min(FIRST_NO_IMAGE_PAUSE * 2 ** boots, MAX_NO_IMAGE_PAUSE))


def run_restore(recovery: Path, *, trust_dir: Path = Path("/etc/kiln/keys"),
                work: Path = Path("/run/kiln"), failure_pause: float = 10.0) -> RestoreVerdict:
    layout = RecoveryLayout(recovery)
    started = time.monotonic()
    try:
        identity = json.loads(layout.state_file(StateFile.IDENTITY).read_text())
        serial, variant = str(identity["serial"]), identity.get("variant") or None
    except (OSError, ValueError, KeyError) as e:
        return RestoreVerdict(ok=False, pause_seconds=failure_pause,
                              message=f"RECOVERY's state/identity.json cannot be read ({e}): "
                                      "was this unit manufactured?")
    recorder = EventRecorder(serial=serial, spool_dir=layout.logs)
    recorder.start(TOP, f"run {recorder.run_id}")
    try:
        trust = TrustStore.from_paths(sorted(path for path in trust_dir.iterdir()
                                             if path.suffix in PUBLIC_KEY_SUFFIXES))
        target = find_target(layout, mount_point=work / "primary")
        restored = restore(layout, target, trust=trust, serial=serial, variant=variant,
                           recorder=recorder)
    except NoGoodImageError as e:
        pause = no_image_pause(layout)
        recorder.finish(TOP, Result.FAIL, str(e))
        return RestoreVerdict(ok=False, pause_seconds=pause,
                              message=f"{e}\n(the next try follows a {pause:.0f} s pause)")
    except (KilnError, OSError) as e:
        recorder.finish(TOP, Result.FAIL, f"{type(e).__name__}: {e}")
        return RestoreVerdict(ok=False, pause_seconds=failure_pause,
                              message=f"{type(e).__name__}: {e}")
    (layout.state / NO_IMAGE_FILE).unlink(missing_ok=True)
    seconds = time.monotonic() - started
    skipped = f"; gave up on {len(restored.quarantined)} bad image(s)" \
        if restored.quarantined else ""
    message = (f"{restored.image.label} restored in {seconds:.1f} s "
               f"({restored.payload_bytes >> 20} MiB){skipped}")
    recorder.finish(TOP, Result.SUCCESS, message)
    return RestoreVerdict(ok=True, message=message, pause_seconds=3.0)
