"""Events: what an appliance tells the server, and how none of it is lost.

The contract (DESIGN.md "Events"): hierarchical like curtin's — every `start` of a stage gets
a `finish` with result success|warn|fail — plus `progress` and `log` events. Each carries the
unit's serial, the run id, a sequence number and a nanosecond timestamp; the server
de-duplicates by (run, seq), so the device may resend freely.

On the device, `EventRecorder` numbers and timestamps events and appends each to a spool on
RECOVERY (`log/events-<run>.jsonl`, fsync'd: a power cut loses no acknowledged event);
`EventSpool.flush` sends what the server has not acknowledged, in order and in batches, and
records the acknowledgement only after the server took a batch. A torn last line (power cut
mid-write) is ignored.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.fsutil import atomic_write_bytes

MAX_BATCH = 100
# What one event may hold: the server stores no more, and refuses a batch that breaks these,
# so the recorder keeps every event within them (a refused batch would be resent forever).
MAX_SERIAL = 128
MAX_RUN_ID = 64
MAX_NAME = 255
MAX_MESSAGE = 16 * 1024
MAX_INTEGER = 2**63 - 1


class EventError(KilnError):
    """An event document is malformed; `problems` lists every problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__("invalid event:\n  " + "\n  ".join(problems))


class EventType(enum.StrEnum):
    START = "start"
    FINISH = "finish"
    PROGRESS = "progress"
    LOG = "log"


class Result(enum.StrEnum):
    SUCCESS = "success"
    WARN = "warn"
    FAIL = "fail"


class Level(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Event:
    serial: str
    run_id: str
    seq: int
    timestamp_ns: int
    type: EventType
    name: str  # the stage, "/"-separated from the outermost: "manufacture/disks/partition"
    message: str = ""
    result: Result | None = None  # finish only
    level: Level | None = None  # log only
    done: int | None = None  # progress only, with total (None when unknown)
    total: int | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "serial": self.serial, "run_id": self.run_id, "seq": self.seq,
            "timestamp_ns": self.timestamp_ns, "type": self.type.value, "name": self.name,
            "message": self.message,
        }
        if self.result is not None:
            document["result"] = self.result.value
        if self.level is not None:
            document["level"] = self.level.value
        if self.type is EventType.PROGRESS:
            document["done"] = self.done
            document["total"] = self.total
        return document

    @classmethod
    def from_json(cls, document: Any) -> Event:
        """Validate an untrusted document; raise `EventError` listing every problem."""
        if not isinstance(document, dict):
            raise EventError(["an event must be a JSON object"])
        problems: list[str] = []
        required = {"serial", "run_id", "seq", "timestamp_ns", "type", "name"}
        known = required | {"message", "result", "level", "done", "total"}
        problems += [f"missing key '{key}'" for key in sorted(required - document.keys())]
        problems += [f"unknown key '{key}'" for key in sorted(document.keys() - known)]
        for key, limit in (("serial", MAX_SERIAL), ("run_id", MAX_RUN_ID), ("name", MAX_NAME),
                           ("message", MAX_MESSAGE)):
            value = document.get(key, "")
            if not isinstance(value, str) or (key != "message" and key in document and not value):
                problems.append(f"{key}: expected a non-empty string")
            elif len(value) > limit:
                problems.append(f"{key}: longer than {limit} characters")
            elif "\x00" in value:
                problems.append(f"{key}: contains a NUL character")
        for key in ("seq", "timestamp_ns"):
            value = document.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not 0 <= value <= MAX_INTEGER:
                problems.append(f"{key}: expected an integer from 0 to 2**63-1")
        kind = _choice(problems, "type", document.get("type"), EventType)
        result = _choice(problems, "result", document.get("result"), Result, optional=True)
        level = _choice(problems, "level", document.get("level"), Level, optional=True)
        if kind is EventType.FINISH and result is None:
            problems.append("a finish event needs a result")
        if kind is not EventType.FINISH and result is not None:
            problems.append("only a finish event has a result")
        if kind is not EventType.LOG and level is not None:
            problems.append("only a log event has a level")
        done, total = document.get("done"), document.get("total")
        if kind is EventType.PROGRESS:
            for key, value in (("done", done), ("total", total)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                          or not 0 <= value <= MAX_INTEGER):
                    problems.append(f"{key}: expected an integer from 0 to 2**63-1, or null")
        elif done is not None or total is not None:
            problems.append("only a progress event has done/total")
        if problems:
            raise EventError(problems)
        assert kind is not None
        return cls(
            serial=document["serial"], run_id=document["run_id"], seq=document["seq"],
            timestamp_ns=document["timestamp_ns"], type=kind, name=document["name"],
            message=document.get("message", ""), result=result, level=level,
            done=done if kind is EventType.PROGRESS else None,
            total=total if kind is EventType.PROGRESS else None,
        )


def _choice(problems: list[str], key: str, value: Any, kind: type[enum.StrEnum], *,
            optional: bool = False) -> Any:
    if value is None and optional:
        return None
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        problems.append(f"{key}: {json.dumps(value)} is not one of {known}")
        return None


Sender = Callable[[Sequence[Event]], None]  # raises when the server did not take the batch


class EventSpool:
    """The durable queue of one run's events on RECOVERY."""

    def __init__(self, directory: Path, run_id: str):
        self.directory = directory
        self.run_id = run_id
        self.path = directory / f"events-{run_id}.jsonl"
        self.acked_path = directory / f"events-{run_id}.acked"
        self._tail_checked = False

    def append(self, event: Event) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(event.to_json(), separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if not self._tail_checked:
                # A power cut mid-write leaves a torn last line: end it, so this event does
                # not become part of it.
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                self._tail_checked = True
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def events(self) -> list[Event]:
        """Every event spooled so far; a torn or corrupt line (a power cut) is skipped."""
        found: list[Event] = []
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as handle:
            for line in handle:
                with contextlib.suppress(ValueError, EventError):
                    found.append(Event.from_json(json.loads(line)))
        return found

    def acknowledged(self) -> int:
        """The highest sequence number the server has taken (-1: none)."""
        try:
            return int(self.acked_path.read_text())
        except (FileNotFoundError, ValueError):
            return -1

    def pending(self) -> list[Event]:
        acked = self.acknowledged()
        return [event for event in self.events() if event.seq > acked]

    def flush(self, send: Sender, *, batch: int = MAX_BATCH) -> int:
        """Send every unacknowledged event in order; return how many the server took.

        A batch that fails stops the flush and stays pending (the exception propagates);
        the next flush sends it again and the server de-duplicates."""
        sent = 0
        pending = self.pending()
        for start in range(0, len(pending), batch):
            chunk = pending[start:start + batch]
            send(chunk)
            atomic_write_bytes(self.acked_path, str(chunk[-1].seq).encode(), mode=0o600)
            sent += len(chunk)
        return sent


def spools(directory: Path) -> list[EventSpool]:
    """Every run's spool in `directory`, oldest activity first (to flush what earlier runs
    could not send, in the order they happened)."""
    paths = sorted(directory.glob("events-*.jsonl"), key=lambda path: path.stat().st_mtime_ns)
    return [EventSpool(directory, path.name[len("events-"):-len(".jsonl")]) for path in paths]


def fit_message(message: str) -> str:
    """A message as the contract allows it: NUL shown as U+FFFD, cut to MAX_MESSAGE
    characters with a marker (a tool's whole output must not make a batch unsendable)."""
    message = message.replace("\x00", "\ufffd")
    if len(message) <= MAX_MESSAGE:
        return message
    marker = f" … [{len(message) - MAX_MESSAGE + 64} characters cut]"
    return message[:MAX_MESSAGE - 64] + marker


class EventRecorder:
    """Numbers, timestamps and spools one run's events."""

    def __init__(self, *, serial: str, spool_dir: Path, run_id: str | None = None,
                 clock: Callable[[], int] = time.time_ns):
        self.serial = serial
        self.run_id = run_id or uuid.uuid4().hex
        self.spool = EventSpool(spool_dir, self.run_id)
        self._clock = clock
        existing = self.spool.events()
        self._next_seq = existing[-1].seq + 1 if existing else 0

    def _emit(self, kind: EventType, name: str, *, message: str = "", **fields: Any) -> Event:
        event = Event(serial=self.serial, run_id=self.run_id, seq=self._next_seq,
                      timestamp_ns=self._clock(), type=kind, name=name,
                      message=fit_message(message), **fields)
        self._next_seq += 1
        self.spool.append(event)
        return event

    def start(self, name: str, message: str = "") -> Event:
        return self._emit(EventType.START, name, message=message)

    def finish(self, name: str, result: Result, message: str = "") -> Event:
        return self._emit(EventType.FINISH, name, message=message, result=result)

    def progress(self, name: str, *, done: int, total: int | None, message: str = "") -> Event:
        return self._emit(EventType.PROGRESS, name, message=message, done=done, total=total)

    def log(self, name: str, level: Level, message: str) -> Event:
        return self._emit(EventType.LOG, name, message=message, level=level)

    @contextlib.contextmanager
    def stage(self, name: str, message: str = "") -> Iterator[None]:
        """`start` now, `finish` on the way out: success, or fail with the error's text."""
        self.start(name, message)
        try:
            yield
        except BaseException as e:
            self.finish(name, Result.FAIL, f"{type(e).__name__}: {e}")
            raise
        self.finish(name, Result.SUCCESS)
