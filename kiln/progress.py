"""Progress for long operations: bytes, rate and ETA on a terminal, silence in a pipe."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from kiln.resource import Closing

_REDRAW_SECONDS = 0.2


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress(Closing):
    """Counts bytes and redraws one status line at most five times a second.

    `enabled` defaults to whether the stream is a terminal, so piping a command's output or
    running it under a service manager prints nothing but the result.
    """

    def __init__(
        self, label: str, *, total: int | None = None, stream: TextIO | None = None,
        enabled: bool | None = None,
    ):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._drawn_at = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn_at >= _REDRAW_SECONDS:
                self._drawn_at = now
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-6)
        rate = self.done / elapsed
        text = f"{self.label}: {format_bytes(self.done)}"
        if self.total:
            text += f" / {format_bytes(self.total)} ({100 * self.done / self.total:.0f}%)"
        text += f"  {format_bytes(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f"  ETA {format_duration((self.total - self.done) / rate)}"
        return text

    def _draw(self, now: float) -> None:
        self.stream.write("\r\x1b[2K" + self.line(now))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def close(self) -> None:
        self.finish()
