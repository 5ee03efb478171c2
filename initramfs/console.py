"""PID 1's logging: every console from the kernel command line, then RECOVERY's log too.

Records made before RECOVERY is found are kept in memory and written to the RECOVERY log as
soon as it is mounted, so the log of a run is complete from the first line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

_FORMAT = "[%(uptime)8.3f] kiln: %(message)s"


def uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


class _UptimeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.uptime = uptime()
        return True


class ConsoleHandler(logging.Handler):
    """Writes to a console device, opened per record: a console that vanishes or blocks
    never takes PID 1 down with it."""

    def __init__(self, device: str):
        super().__init__()
        self.device = device

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\r\n").encode("utf-8", "replace")
            fd = os.open(self.device, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            pass


class RunLog:
    """The logging set-up of one ramdisk run."""

    def __init__(self, devices: Sequence[str], *, run_id: str | None = None):
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.root = logging.getLogger()
        self.root.setLevel(logging.INFO)
        formatter = logging.Formatter(_FORMAT)
        self._filter = _UptimeFilter()
        for device in devices:
            handler = ConsoleHandler(device)
            handler.setFormatter(formatter)
            handler.addFilter(self._filter)
            self.root.addHandler(handler)
        self._early = _Buffer()
        self._early.addFilter(self._filter)
        self.root.addHandler(self._early)
        self.file: Path | None = None

    def attach_recovery(self, log_dir: Path) -> Path | None:
        """Start RECOVERY's log for this run, beginning with everything logged so far."""
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            path = log_dir / f"{stamp}-{self.run_id}.log"
            handler = _SyncedFileHandler(path)
        except OSError as e:
            logging.getLogger(__name__).error("cannot write a log on RECOVERY: %s", e)
            return None
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(self._filter)
        for record in self._early.records:
            handler.handle(record)
        self.root.removeHandler(self._early)
        self.root.addHandler(handler)
        self.file = path
        return path

    def detach_recovery(self) -> None:
        """Close RECOVERY's log (before RECOVERY is unmounted)."""
        for handler in list(self.root.handlers):
            if isinstance(handler, _SyncedFileHandler):
                self.root.removeHandler(handler)
                handler.close()


class _Buffer(logging.Handler):
    def __init__(self, limit: int = 10_000):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.limit:
            self.records.append(record)


class _SyncedFileHandler(logging.FileHandler):
    """Each record reaches the disk before PID 1 goes on: the power may fail next."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.stream is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.stream.fileno())
