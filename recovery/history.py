"""Per-image history of restore attempts, kept on RECOVERY in `state/image-history.json`.

An attempt is recorded before the first destructive step and closed when it ends. An attempt
still open when the next one begins never finished (power cut, crash, hang) and counts as a
failure: gprovision never counted those, so an image that killed the unit mid-restore was
tried forever. An image whose consecutive failures reach the limit is abandoned for the next
older one. Every change is written atomically and durably.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.fsutil import atomic_write_json

HISTORY_VERSION = 1
DEFAULT_FAILURE_LIMIT = 3


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # found still open when the next attempt began


@dataclass(frozen=True)
class ImageRecord:
    attempts: int = 0
    successes: int = 0
    failures: int = 0  # includes interrupted attempts
    interrupted: int = 0
    consecutive_failures: int = 0
    in_progress: bool = False
    last_outcome: Outcome | None = None
    last_reason: str = ""
    last_time: float = 0.0

    def failures_counting_open(self) -> int:
        """Consecutive failures, counting an attempt that is still open as one."""
        return self.consecutive_failures + (1 if self.in_progress else 0)

    def to_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["last_outcome"] = self.last_outcome.value if self.last_outcome else None
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ImageRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in document.items() if k in fields}
        if values.get("last_outcome"):
            values["last_outcome"] = Outcome(values["last_outcome"])
        return cls(**values)


class HistoryError(KilnError):
    pass


class ImageHistory:
    """Read-modify-write access to the history file; callers hold the store's lock."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self.path = path
        self._clock = clock

    def _load(self) -> tuple[dict[str, ImageRecord], str | None]:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as e:
            raise HistoryError(f"cannot read image history {self.path}: {e}") from e
        if document.get("version") != HISTORY_VERSION:
            version = document.get("version")
            raise HistoryError(f"{self.path}: unsupported history version {version}")
        records = {key: ImageRecord.from_json(value) for key, value in document["images"].items()}
        return records, document.get("factory")

    def _save(self, records: dict[str, ImageRecord], factory: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {
            "version": HISTORY_VERSION,
            "factory": factory,
            "images": {key: record.to_json() for key, record in sorted(records.items())},
        })

    def records(self) -> dict[str, ImageRecord]:
        return self._load()[0]

    def record(self, image_id: str) -> ImageRecord:
        return self._load()[0].get(image_id, ImageRecord())

    def factory_image(self) -> str | None:
        return self._load()[1]

    def set_factory_image(self, image_id: str) -> None:
        records, _ = self._load()
        self._save(records, image_id)

    def begin_attempt(self, image_id: str) -> ImageRecord:
        """Open an attempt; an attempt left open before counts as interrupted."""
        records, factory = self._load()
        record = records.get(image_id, ImageRecord())
        if record.in_progress:
            record = dataclasses.replace(
                record, failures=record.failures + 1, interrupted=record.interrupted + 1,
                consecutive_failures=record.consecutive_failures + 1,
                last_outcome=Outcome.INTERRUPTED, last_reason="the attempt never finished",
            )
        record = dataclasses.replace(
            record, attempts=record.attempts + 1, in_progress=True, last_time=self._clock()
        )
        records[image_id] = record
        self._save(records, factory)
        return record

    def finish_attempt(self, image_id: str, *, succeeded: bool, reason: str = "") -> ImageRecord:
        records, factory = self._load()
        record = records.get(image_id, ImageRecord())
        if succeeded:
            record = dataclasses.replace(
                record, successes=record.successes + 1, consecutive_failures=0,
                in_progress=False, last_outcome=Outcome.SUCCEEDED, last_reason=reason,
                last_time=self._clock(),
            )
        else:
            record = dataclasses.replace(
                record, failures=record.failures + 1,
                consecutive_failures=record.consecutive_failures + 1, in_progress=False,
                last_outcome=Outcome.FAILED, last_reason=reason, last_time=self._clock(),
            )
        records[image_id] = record
        self._save(records, factory)
        return record

    def give_up(self, image_id: str, *, reason: str, limit: int) -> ImageRecord:
        """A failed attempt that abandons the image at once (an update on trial that did not
        boot): its consecutive failures reach `limit`."""
        record = self.finish_attempt(image_id, succeeded=False, reason=reason)
        if record.consecutive_failures >= limit:
            return record
        records, factory = self._load()
        record = dataclasses.replace(record, consecutive_failures=limit)
        records[image_id] = record
        self._save(records, factory)
        return record

    def forget(self, image_ids: set[str]) -> None:
        records, factory = self._load()
        kept = {key: value for key, value in records.items() if key not in image_ids}
        if kept != records:
            self._save(kept, factory)
