"""What the lifecycle demo shows, as pure functions: which console lines and server events
are progress worth a line, what the server's unit record must say after a manufacture, and
the summary table at the end."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lab.demo_os import DEMO_OS_MARK


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "FAILED"
    NOT_RUN = "not run"


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One step of the demo as the summary shows it."""

    title: str
    outcome: Outcome
    seconds: float | None = None
    detail: str = ""


# Console lines a person watching wants to see (in order of the boot). Commands the ramdisk
# runs (`kiln: + …`) and manufacture's own steps (the server's event stream shows those)
# are left out.
_KEY_LINES = (
    re.compile(r"Kiln: manufacturing with profile \S+"),  # the server's iPXE script
    re.compile(r"Linux version \S+"),
    re.compile(r"kiln: decision: [^\r\n]*"),
    re.compile(r"kiln: network: \S+ has [^\r\n]*"),
    re.compile(r"kiln: restore: [^\r\n]*"),
    re.compile(r"kiln: (manufacture|restore) (succeeded|failed): [^\r\n]*"),
    re.compile(r"kiln: normal boot: [^\r\n]*"),
    re.compile(r"kiln: (error|crashed|ERROR)[^\r\n]*"),
    re.compile(r"Kernel panic[^\r\n]*"),
    re.compile(r"Kiln demo OS [^\r\n]*"),
)
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")


def console_key_line(line: str) -> str | None:
    """The part of one console line worth showing, or None."""
    if DEMO_OS_MARK in line:
        return None  # the friendlier "Kiln demo OS … is up" line says the same
    for pattern in _KEY_LINES:
        match = pattern.search(line)
        if match:
            text = match.group(0).strip()
            if text.startswith("Linux version"):
                return f"kernel {text.split()[2]} starting"
            return _TIMESTAMP.sub("", text)
    return None


def event_line(event: Mapping[str, Any]) -> str | None:
    """One server event as a progress line, or None for those not worth one: progress
    ticks, info and debug logs, and the successful end of a step within the run."""
    kind, name, message = event.get("type"), str(event.get("name", "")), event.get("message")
    if kind == "start":
        return f"{name}: {message}" if message else f"{name} started"
    if kind == "finish":
        result = event.get("result", "?")
        if result == "success" and "/" in name:
            return None  # a step that went as it said it would: its start line told it
        return f"{name}: {result}" + (f" — {message}" if message else "")
    if kind == "log" and event.get("level") in ("warning", "error"):
        return f"{name}: {event.get('level')}: {message}"
    return None


def record_problems(record: Mapping[str, Any], *, serial: str, profile: str,
                    variant: str) -> list[str]:
    """What is wrong with the server's record of a unit that just manufactured (empty when
    it says what the console said)."""
    problems: list[str] = []
    expected = {"serial": serial, "profile": profile, "variant": variant,
                "lifecycle": "manufacture", "status": "succeeded"}
    for key, value in expected.items():
        if record.get(key) != value:
            problems.append(f"{key} is {record.get(key)!r}, expected {value!r}")
    runs = [run for run in record.get("runs", []) if run.get("kind") == "manufacture"]
    if not runs:
        problems.append("no manufacture run recorded")
    elif runs[0].get("status") != "succeeded":
        problems.append(f"the latest manufacture run is {runs[0].get('status')!r}: "
                        f"{runs[0].get('failure') or 'no failure recorded'}")
    if not record.get("credential_escrowed"):
        problems.append("no admin password escrowed")
    if not record.get("manufactured_ns"):
        problems.append("no manufacture time recorded")
    return problems


def manufacture_seconds(record: Mapping[str, Any]) -> float | None:
    """How long the unit's latest manufacture run took by its own clock, per the server."""
    runs = [run for run in record.get("runs", []) if run.get("kind") == "manufacture"]
    if not runs or not runs[0].get("finished_ns") or not runs[0].get("started_ns"):
        return None
    return float(runs[0]["finished_ns"] - runs[0]["started_ns"]) / 1e9


def parse_admin(output: str) -> tuple[str, str]:
    """(one-time password, API token) from `kiln server create-admin`'s output."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        label, _, value = line.rpartition(": ")
        if label.startswith("one-time password"):
            values["password"] = value.strip()
        elif label.startswith("API token"):
            values["token"] = value.strip()
    if set(values) != {"password", "token"}:
        raise ValueError(f"create-admin printed no password and token: {output!r}")
    return values["password"], values["token"]


def clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 100 else f"{clock(seconds)} min"


def summary_table(steps: Sequence[StepRecord]) -> str:
    """The end-of-demo table: step, time, result, what it rests on."""
    width = max((len(step.title) for step in steps), default=4)
    lines = [f"  {'step':<{width}}  {'time':>9}  {'result':<7}  evidence"]
    for step in steps:
        lines.append(f"  {step.title:<{width}}  {duration(step.seconds):>9}  "
                     f"{step.outcome.value:<7}  {step.detail}".rstrip())
    return "\n".join(lines)
