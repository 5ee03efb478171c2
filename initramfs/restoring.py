"""The ramdisk's factory restore: RECOVERY and the unit's state in, `recovery.restore` run,
a verdict out. Never raises.

- Images are trusted by the ramdisk's own keys (`/etc/kiln/keys`, built in), not RECOVERY's
  `keys/`: RECOVERY is writable from the running OS.
- The serial and variant come from RECOVERY's `state/identity.json`.
- Events are spooled in RECOVERY's `log/` (the restore path brings no network up); they go to
  the server with a later flush. Only an erase certificate the server has not confirmed (an
  erase cut off after it finished, before it was sent) makes a successful restore bring the
  network up and send it, with the spooled events.
- No good image left: the console says why, and the pause before the next reboot grows with
  each such boot in a row (`state/no-image-boots`), from 30 s to 10 minutes — never a tight
  reboot loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from initramfs import network
from initramfs.backoff import growing_pause, reset
from initramfs.erasing import send_outbox, unsent_certificates
from kiln.errors import KilnError
from kiln.events import EventRecorder, Result
from kiln.image.signing import PUBLIC_KEY_SUFFIXES, TrustStore
from recovery.bootfiles import BootFilesUpdate
from recovery.bootsetup import running_console_arguments
from recovery.layout import RecoveryLayout, StateFile
from recovery.restore import find_target, load_disks, restore
from recovery.store import NoGoodImageError
from recovery.uefi_entries import EFIVARS

log = logging.getLogger(__name__)

TOP = "restore"


@dataclass(frozen=True, kw_only=True)
class RestoreVerdict:
    ok: bool
    message: str
    pause_seconds: float


def run_restore(recovery: Path, *, trust_dir: Path = Path("/etc/kiln/keys"),
                work: Path = Path("/run/kiln"), failure_pause: float = 10.0,
                connect: Callable[[], object] = network.bring_up) -> RestoreVerdict:
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
        boot_files = BootFilesUpdate(layout=layout, plans=load_disks(layout),
                                     esp_mount=work / "esp",
                                     console_args=running_console_arguments(),
                                     efivars=EFIVARS if EFIVARS.is_dir() else None)
        restored = restore(layout, target, trust=trust, serial=serial, variant=variant,
                           recorder=recorder, boot_files=boot_files)
    except NoGoodImageError as e:
        pause = growing_pause(layout.state_file(StateFile.NO_IMAGE_BOOTS))
        recorder.finish(TOP, Result.FAIL, str(e))
        return RestoreVerdict(ok=False, pause_seconds=pause,
                              message=f"{e}\n(the next try follows a {pause:.0f} s pause)")
    except (KilnError, OSError) as e:
        recorder.finish(TOP, Result.FAIL, f"{type(e).__name__}: {e}")
        return RestoreVerdict(ok=False, pause_seconds=failure_pause,
                              message=f"{type(e).__name__}: {e}")
    reset(layout.state_file(StateFile.NO_IMAGE_BOOTS))
    if unsent_certificates(layout):  # an erase cut off before it reached the server
        log.info("restore: %s", send_outbox(layout, serial=serial, connect=connect))
    seconds = time.monotonic() - started
    skipped = f"; gave up on {len(restored.quarantined)} bad image(s)" \
        if restored.quarantined else ""
    message = (f"{restored.image.label} restored in {seconds:.1f} s "
               f"({restored.payload_bytes >> 20} MiB){skipped}")
    recorder.finish(TOP, Result.SUCCESS, message)
    return RestoreVerdict(ok=True, message=message, pause_seconds=3.0)
