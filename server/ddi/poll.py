"""What makes root polls cheap: a per-worker cache of each controller's answer, and
last-seen times written in batches instead of on every poll (as hawkBit does).

A cached answer holds what authenticates the controller (digests of its tokens) and the
exact body and ETag to send. It is dropped when this worker changes the controller's records
(feedback, configData, an assignment), and expires after `seconds` at most, so a change made
through another worker process reaches the device within that time; it also expires when the
action's maintenance window opens or closes.

Last-seen times and addresses are kept in memory and written every `flush_seconds` by a
background thread (and once more at shutdown): 10,000 devices polling cost one batched UPDATE
every few seconds, not 10,000 writes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, update

from server.db.schema import targets

log = logging.getLogger("kiln.server.ddi")
MAX_ENTRIES = 500_000


@dataclass(frozen=True, kw_only=True)
class CachedPoll:
    target_id: int
    token_hashes: frozenset[str]  # TargetToken digests that are this controller's
    base: str  # the public URL the links were made with
    body: bytes
    etag: str
    expires: float  # time.monotonic() after which it is not used


class PollCache:
    def __init__(self, *, seconds: float):
        self.seconds = seconds
        self._entries: dict[tuple[str, str], CachedPoll] = {}

    def get(self, tenant: str, controller_id: str, *, base: str) -> CachedPoll | None:
        entry = self._entries.get((tenant, controller_id))
        if entry is None or entry.base != base or entry.expires < time.monotonic():
            return None
        return entry

    def put(self, tenant: str, controller_id: str, entry: CachedPoll) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()  # rare; cheaper and simpler than an LRU on every poll
        self._entries[(tenant, controller_id)] = entry

    def forget(self, tenant: str, controller_id: str) -> None:
        self._entries.pop((tenant, controller_id), None)

    def forget_tenant(self, tenant: str) -> None:
        for key in [key for key in self._entries if key[0] == tenant]:
            self._entries.pop(key, None)

    def lifetime(self, valid_until_epoch: float) -> float:
        """The monotonic expiry of an entry made now that must not outlive `valid_until`."""
        left = min(self.seconds, max(0.0, valid_until_epoch - time.time()))
        return time.monotonic() + left


class SeenRecorder:
    """Last-seen times and addresses by target id, written in batches."""

    def __init__(self, *, flush_seconds: float):
        self.flush_seconds = flush_seconds
        self._pending: dict[int, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, target_id: int, *, at_ns: int, address: str) -> None:
        self._pending[target_id] = (at_ns, address)

    def flush(self, engine: Engine) -> int:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        rows = [{"target": target_id, "seen": seen, "seen_from": address[:64]}
                for target_id, (seen, address) in pending.items()]
        statement = (update(targets).where(targets.c.id == bindparam("target"))
                     .values(last_seen_ns=bindparam("seen"), address=bindparam("seen_from")))
        try:
            with engine.begin() as connection:
                connection.execute(statement, rows)
        except Exception:
            log.exception("could not write %d last-seen times; keeping them for the next "
                          "flush", len(rows))
            with self._lock:
                for target_id, seen in pending.items():
                    self._pending.setdefault(target_id, seen)
            return 0
        return len(rows)

    def start(self, engine: Engine) -> None:
        def loop() -> None:
            while not self._stop.wait(self.flush_seconds):
                self.flush(engine)

        self._thread = threading.Thread(target=loop, name="ddi-last-seen", daemon=True)
        self._thread.start()

    def stop(self, engine: Engine) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush(engine)
