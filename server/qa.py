"""The QA report written when a unit's manufacture succeeds: what was built, on what
hardware, through which stages, how long each took and what warned. It is stored as JSON and
rendered printable by the web UI (`/ui/units/{serial}/qa`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {}


def stages(timeline: Sequence[Mapping[Any, Any]]) -> list[dict[str, Any]]:
    """Each stage's start and finish paired by name, in the order they started."""
    open_at: dict[str, Mapping[Any, Any]] = {}
    found: list[dict[str, Any]] = []
    for event in timeline:
        if event["type"] == "start":
            open_at[event["name"]] = event
        elif event["type"] == "finish":
            start = open_at.pop(event["name"], None)
            found.append({
                "name": event["name"],
                "result": event["result"],
                "message": event["message"],
                "seconds": (round((event["timestamp_ns"] - start["timestamp_ns"]) / 1e9, 3)
                            if start is not None else None),
                "_order": start["seq"] if start is not None else event["seq"],
            })
    for name, start in open_at.items():
        found.append({"name": name, "result": None, "message": "never finished",
                      "seconds": None, "_order": start["seq"]})
    found.sort(key=lambda stage: stage.pop("_order"))
    return found


def qa_report(*, unit: Mapping[Any, Any], run: Mapping[Any, Any],
              timeline: Sequence[Mapping[Any, Any]], generated_ns: int) -> dict[str, Any]:
    all_stages = stages(timeline)
    return {
        "kind": "kiln-qa-report",
        "version": 1,
        "serial": unit["serial"],
        "profile": unit["profile"],
        "variant": unit["variant"],
        "dmi": _loads(unit["dmi"]),
        "macs": unit["macs"].split(),
        "hardware": _loads(unit["hardware"]),
        "run_id": run["run_id"],
        "started_ns": run["started_ns"],
        "finished_ns": run["finished_ns"],
        "generated_ns": generated_ns,
        "result": "pass",
        "stages": all_stages,
        "warnings": [stage for stage in all_stages if stage["result"] == "warn"]
        + [{"name": event["name"], "message": event["message"]} for event in timeline
           if event["type"] == "log" and event["level"] in ("warning", "error")],
        "events": len(timeline),
    }
