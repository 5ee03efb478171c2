"""The DDI contract's values: what devices send and what actions go through.

Names follow hawkBit's DDI (shared/ddi-checklist.md); every value a device may send is an enum
here, so a wrong one is refused with a message that lists the right ones.
"""

from __future__ import annotations

import datetime
import enum
import re
from dataclasses import dataclass
from typing import Any

from kiln.errors import KilnError


class DdiError(KilnError):
    """A device's request does not fit the DDI contract (answered 400)."""


class Execution(enum.StrEnum):
    """`status.execution` of a feedback (hawkBit spells the download step `download`)."""

    CLOSED = "closed"
    PROCEEDING = "proceeding"
    CANCELED = "canceled"
    SCHEDULED = "scheduled"
    REJECTED = "rejected"
    RESUMED = "resumed"
    DOWNLOADED = "downloaded"
    DOWNLOAD = "download"


class Finished(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    NONE = "none"


class ActionState(enum.StrEnum):
    WAITING_CONFIRMATION = "waiting_confirmation"  # offered for the device's consent first
    RUNNING = "running"  # assigned; offered to the device, or the device works on it
    DOWNLOAD = "download"
    DOWNLOADED = "downloaded"
    WARNING = "warning"  # the device rejected it for now: still offered
    FINISHED = "finished"
    ERROR = "error"
    CANCELING = "canceling"  # the device is asked to stop (cancelAction)
    CANCELED = "canceled"
    CANCEL_REJECTED = "cancel_rejected"  # history only: the device went on, state RUNNING

    @property
    def closed(self) -> bool:
        return self in {ActionState.FINISHED, ActionState.ERROR, ActionState.CANCELED}


class Handling(enum.StrEnum):
    """`deployment.download` and `deployment.update`."""

    SKIP = "skip"
    ATTEMPT = "attempt"
    FORCED = "forced"


class ActionKind(enum.StrEnum):
    FORCED = "forced"  # download and install at once
    SOFT = "soft"  # the device may ask its user first (attempt)
    DOWNLOAD_ONLY = "download_only"  # fetch, never install

    @property
    def download(self) -> Handling:
        return Handling.ATTEMPT if self is ActionKind.SOFT else Handling.FORCED

    @property
    def update(self) -> Handling:
        return {ActionKind.FORCED: Handling.FORCED, ActionKind.SOFT: Handling.ATTEMPT,
                ActionKind.DOWNLOAD_ONLY: Handling.SKIP}[self]


class UpdateMode(enum.StrEnum):
    """How a target gets its software."""

    ROLLOUT = "rollout"  # rollouts and operators assign (the default)
    MANUAL = "manual"  # only an operator assigns; rollouts pass it over
    PINNED = "pinned"  # keeps `pinned_module_id`; anything else is refused
    LATEST = "latest"  # always the newest module compatible with its variant


class AuthScheme(enum.StrEnum):
    TARGET_TOKEN = "TargetToken"  # noqa: S105 (a scheme's name)
    GATEWAY_TOKEN = "GatewayToken"  # noqa: S105
    CERTIFICATE = "certificate"  # a client certificate, vouched for by a trusted proxy


class Consent(enum.StrEnum):
    """`confirmation` of a confirmationBase feedback."""

    CONFIRMED = "confirmed"
    DENIED = "denied"


@dataclass(frozen=True, kw_only=True)
class ConfirmationFeedback:
    consent: Consent
    code: int | None
    details: tuple[str, ...]


def parse_confirmation(document: Any) -> ConfirmationFeedback:
    """`{"confirmation": "confirmed|denied", "code": 200, "details": [...]}`."""
    if not isinstance(document, dict):
        raise DdiError("the confirmation feedback must be a JSON object")
    consent = _choice(Consent, document.get("confirmation"), "confirmation")
    details = document.get("details", [])
    if not isinstance(details, list) or not all(isinstance(d, str) for d in details):
        raise DdiError("details must be a list of strings")
    code = document.get("code")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise DdiError("code must be an integer")
    return ConfirmationFeedback(consent=consent, code=code, details=tuple(details))


class ConfigMode(enum.StrEnum):
    MERGE = "merge"
    REPLACE = "replace"
    REMOVE = "remove"


EXECUTION_STATE: dict[Execution, ActionState] = {
    Execution.DOWNLOAD: ActionState.DOWNLOAD,
    Execution.DOWNLOADED: ActionState.DOWNLOADED,
    Execution.PROCEEDING: ActionState.RUNNING,
    Execution.SCHEDULED: ActionState.RUNNING,
    Execution.RESUMED: ActionState.RUNNING,
    Execution.REJECTED: ActionState.WARNING,
    Execution.CANCELED: ActionState.CANCELED,
}


def state_after(execution: Execution, finished: Finished) -> ActionState:
    """The action's state after a deployment feedback."""
    if execution is Execution.CLOSED:
        return ActionState.ERROR if finished is Finished.FAILURE else ActionState.FINISHED
    return EXECUTION_STATE[execution]


@dataclass(frozen=True, kw_only=True)
class Feedback:
    execution: Execution
    finished: Finished
    details: tuple[str, ...]
    code: int | None
    progress: tuple[int, int] | None  # (cnt, of)


def _choice(kind: type[enum.StrEnum], value: Any, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise DdiError(f"{where} is {value!r}; it must be one of {known}") from None


def parse_feedback(document: Any) -> Feedback:
    """A feedback body (`{"status": {"execution", "result": {"finished"}, …}}`); unknown
    fields (SWUpdate's `id`, `time`) are ignored."""
    if not isinstance(document, dict) or not isinstance(document.get("status"), dict):
        raise DdiError("the feedback needs a 'status' object")
    status = document["status"]
    execution = _choice(Execution, status.get("execution"), "status.execution")
    result = status.get("result", {})
    if not isinstance(result, dict):
        raise DdiError("status.result must be an object")
    finished = _choice(Finished, result.get("finished", "none"), "status.result.finished")
    details = status.get("details", [])
    if not isinstance(details, list) or not all(isinstance(d, str) for d in details):
        raise DdiError("status.details must be a list of strings")
    code = status.get("code")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise DdiError("status.code must be an integer")
    progress = result.get("progress")
    counts: tuple[int, int] | None = None
    if isinstance(progress, dict):
        cnt, of = progress.get("cnt"), progress.get("of")
        if isinstance(cnt, int) and isinstance(of, int):
            counts = (cnt, of)
    return Feedback(execution=execution, finished=finished, details=tuple(details),
                    code=code, progress=counts)


@dataclass(frozen=True, kw_only=True)
class ConfigData:
    mode: ConfigMode
    data: dict[str, str]


def parse_config_data(document: Any) -> ConfigData:
    """`{"mode": "merge|replace|remove", "data": {str: str}}`; an empty `data` is refused."""
    if not isinstance(document, dict):
        raise DdiError("configData must be a JSON object")
    mode = _choice(ConfigMode, document.get("mode", "merge"), "mode")
    data = document.get("data")
    if not isinstance(data, dict) or not data:
        raise DdiError("configData needs a non-empty 'data' object of attributes")
    problems = [key for key, value in data.items()
                if not isinstance(value, str) or not 0 < len(key) <= 128 or len(value) > 512]
    if problems:
        raise DdiError(f"attribute(s) {', '.join(map(repr, problems[:5]))}: keys are 1-128 "
                       "characters and values strings of at most 512")
    return ConfigData(mode=mode, data=dict(data))


def merged_attributes(current: dict[str, str], change: ConfigData) -> dict[str, str]:
    if change.mode is ConfigMode.REPLACE:
        return dict(change.data)
    if change.mode is ConfigMode.REMOVE:
        return {key: value for key, value in current.items() if key not in change.data}
    return {**current, **change.data}


_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
WEEK_SECONDS = 7 * 86_400


@dataclass(frozen=True, kw_only=True)
class MaintenanceWindow:
    """When an action may install: daily from `start` (UTC, "HH:MM") for `minutes`, on the
    given weekdays (0 Monday … 6 Sunday). Downloads may happen at any time."""

    start: str
    minutes: int
    weekdays: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)

    def __post_init__(self) -> None:
        problems = []
        if not _CLOCK.match(self.start):
            problems.append(f"start {self.start!r} is not HH:MM (UTC)")
        if not 1 <= self.minutes <= 24 * 60:
            problems.append("minutes must be 1 to 1440")
        if not self.weekdays or any(day not in range(7) for day in self.weekdays):
            problems.append("weekdays are 0 (Monday) to 6 (Sunday), at least one")
        if problems:
            raise DdiError("maintenance window: " + "; ".join(problems))

    def _openings(self, at: datetime.datetime) -> list[datetime.datetime]:
        hours, minutes = map(int, self.start.split(":"))
        midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return [opening for offset in range(-1, 8)
                if (opening := midnight + datetime.timedelta(days=offset, hours=hours,
                                                             minutes=minutes)).weekday()
                in self.weekdays]

    def state(self, at_seconds: float) -> tuple[bool, float]:
        """(open now, seconds since the epoch when that changes)."""
        at = datetime.datetime.fromtimestamp(at_seconds, tz=datetime.UTC)
        length = datetime.timedelta(minutes=self.minutes)
        for opening in self._openings(at):
            if opening <= at < opening + length:
                return True, (opening + length).timestamp()
        upcoming = [opening for opening in self._openings(at) if opening > at]
        return False, (min(upcoming).timestamp() if upcoming else at_seconds + WEEK_SECONDS)

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "minutes": self.minutes, "weekdays": list(self.weekdays)}

    @classmethod
    def from_json(cls, document: Any) -> MaintenanceWindow:
        if not isinstance(document, dict):
            raise DdiError("a maintenance window is an object: start, minutes, weekdays")
        weekdays = document.get("weekdays", list(range(7)))
        if not isinstance(weekdays, list) or not all(isinstance(d, int) for d in weekdays):
            raise DdiError("maintenance window: weekdays must be a list of integers")
        start, minutes = document.get("start"), document.get("minutes")
        if not isinstance(start, str) or not isinstance(minutes, int):
            raise DdiError("maintenance window: start (HH:MM) and minutes are required")
        return cls(start=start, minutes=minutes, weekdays=tuple(sorted(set(weekdays))))


def sleep_text(seconds: int) -> str:
    """DDI's polling interval: HH:MM:SS."""
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
