"""What makes root polls cheap: a per-worker cache of each controller's answer, and
last-seen times written in batches instead of on every poll (as hawkBit does).

A cached answer holds what authenticates the controller (digests of its tokens) and the
exact body and ETag to send. Every change to a controller's records (feedback, configData,
an assignment, a rollout's step) is written to the `ddi_changes` feed in the same
transaction; the worker that made it drops its cached answer at once, and every worker reads
the feed every `sync_seconds` (`ChangeFeed`) and drops the answers another worker made stale.
So an answer can live long (`seconds`, a bound for what no feed reports) and a device's
polls between changes never reach the database, at any polling interval. An answer also
expires when the action's maintenance window opens or closes.

Last-seen times and addresses are kept in memory and written every `flush_seconds` by a
background thread (and once more at shutdown): 10,000 devices polling cost one batched UPDATE
every few seconds, not 10,000 writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, select

from server.db.schema import ddi_changes

log = logging.getLogger("kiln.server.ddi")
MAX_ENTRIES = 500_000
FLUSH_CHUNK = 2_000
SEEN_UPDATE = {  # by the driver's parameter style (SQLite's, psycopg's)
    "qmark": "UPDATE targets SET last_seen_ns = ?, address = ? WHERE id = ?",
    "format": "UPDATE targets SET last_seen_ns = %s, address = %s WHERE id = %s",
}


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

    def clear(self) -> None:
        self._entries.clear()

    def forget_tenant(self, tenant: str) -> None:
        for key in [key for key in self._entries if key[0] == tenant]:
            self._entries.pop(key, None)

    def peek(self, tenant: str, controller_id: str) -> CachedPoll | None:
        """The entry whatever its base URL, if it has not expired (the ASGI fast path)."""
        entry = self._entries.get((tenant, controller_id))
        return entry if entry is not None and entry.expires >= time.monotonic() else None

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
        """Write what was recorded since the last flush, in chunks (the driver's own
        executemany: a large fleet's batch must not hold up the polls being answered)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        statement = SEEN_UPDATE["qmark" if engine.dialect.paramstyle == "qmark" else "format"]
        rows = [(seen, address[:64], target_id)
                for target_id, (seen, address) in pending.items()]
        try:
            with engine.begin() as connection:
                for start in range(0, len(rows), FLUSH_CHUNK):
                    connection.exec_driver_sql(statement, rows[start:start + FLUSH_CHUNK])
                    time.sleep(0)  # let the event loop's thread run between chunks
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


FEED_KEEP_NS = 3600 * 10**9  # changes older than this are pruned (every worker has read them)


def record_changes(connection: Connection, *, tenant: str,
                   controller_ids: Iterable[str | None]) -> None:
    """Note in the feed that these controllers' answers changed (None: the whole tenant's);
    call inside the transaction that changed them."""
    now = time.time_ns()
    rows = [{"tenant": tenant, "controller_id": controller_id, "at_ns": now}
            for controller_id in dict.fromkeys(controller_ids)]
    if rows:
        connection.execute(ddi_changes.insert(), rows)


class ChangeFeed:
    """Reads `ddi_changes` every `sync_seconds` and drops the cached answers it names."""

    def __init__(self, *, polls: PollCache, forget_tenant_settings: Callable[[str], None],
                 sync_seconds: float):
        self.polls = polls
        self.forget_tenant_settings = forget_tenant_settings
        self.sync_seconds = sync_seconds
        self.last_id = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self, engine: Engine) -> int:
        """Apply what changed since the last read; returns how many changes."""
        with engine.connect() as connection:
            rows = connection.execute(select(ddi_changes.c.id, ddi_changes.c.tenant,
                                             ddi_changes.c.controller_id)
                                      .where(ddi_changes.c.id > self.last_id)
                                      .order_by(ddi_changes.c.id)).all()
        for row in rows:
            if row.controller_id is None:
                self.polls.forget_tenant(row.tenant)
                self.forget_tenant_settings(row.tenant)
            else:
                self.polls.forget(row.tenant, row.controller_id)
            self.last_id = row.id
        return len(rows)

    def prune(self, engine: Engine) -> None:
        with engine.begin() as connection:
            connection.execute(delete(ddi_changes).where(
                ddi_changes.c.at_ns < time.time_ns() - FEED_KEEP_NS))

    def start(self, engine: Engine) -> None:
        with engine.connect() as connection:
            self.last_id = connection.execute(
                select(func.coalesce(func.max(ddi_changes.c.id), 0))).scalar_one()

        def loop() -> None:
            rounds = 0
            while not self._stop.wait(self.sync_seconds):
                try:
                    self.catch_up(engine)
                    rounds += 1
                    if rounds % 600 == 0:
                        self.prune(engine)
                except Exception:
                    log.exception("could not read the DDI change feed; dropping every cached "
                                  "answer to be safe")
                    self.polls.clear()

        self._thread = threading.Thread(target=loop, name="ddi-change-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
