"""Pauses that grow with each failed boot in a row (30 s doubling to 10 minutes), counted in a
file on RECOVERY: a unit that cannot finish (no good image, an erase that fails) retries
without a tight reboot loop, and the count survives power cuts."""

from __future__ import annotations

import contextlib
from pathlib import Path

from kiln.fsutil import atomic_write_bytes

FIRST_PAUSE = 30.0
MAX_PAUSE = 600.0


def growing_pause(counter: Path) -> float:
    """Count this boot in `counter`; the pause before the next reboot."""
    try:
        boots = int(counter.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        boots = 0
    with contextlib.suppress(OSError):  # RECOVERY read-only or broken: pause anyway
        atomic_write_bytes(counter, f"{boots + 1}\n".encode())
    return float(min(FIRST_PAUSE * 2 ** boots, MAX_PAUSE))


def reset(counter: Path) -> None:
    counter.unlink(missing_ok=True)
