"""The erase certificate, in the spirit of NIST SP 800-88 Rev. 1 (appendix G): who, what,
how, when, and whether it was verified. One JSON document per erase run; the ramdisk keeps
it on RECOVERY (`certificates/erase-<run>.json`) and sends it to the server.

Reading one: `result` is `erased` only when every region's `verification` is `passed`;
each entry of `devices` names the region (`target`: PRIMARY, DATA or the whole disk), the
device's model, serial and transport, the `method` that erased it and its NIST category
(`purge`: a device-level sanitize, crypto or secure erase; `clear`: overwrite or a verified
discard), the canaries that were written and found gone, and every `attempts` entry — a
method that failed or left canaries behind is listed with why, before the one that worked.
`passed_over` says why stronger methods were not tried (no support, a bridge, RECOVERY on
the same disk). `interrupted_runs` lists earlier runs of the same erase that a power cut or
crash ended.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erase.run import RegionResult
from kiln.fsutil import atomic_write_bytes

STANDARD = "NIST SP 800-88 Rev. 1"
CERTIFICATE_VERSION = 1


def _iso(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).isoformat(
        timespec="seconds")


def certificate(*, run_id: str, serial: str, started_ns: int, finished_ns: int,
                results: Sequence[RegionResult], interrupted_runs: Sequence[str] = (),
                tool: str) -> dict[str, Any]:
    verified = bool(results) and all(result.verified for result in results)
    return {
        "version": CERTIFICATE_VERSION, "run_id": run_id, "serial": serial,
        "standard": STANDARD, "tool": tool,
        "result": "erased" if verified else "failed",
        "started": _iso(started_ns), "finished": _iso(finished_ns),
        "seconds": round((finished_ns - started_ns) / 1e9, 1),
        "interrupted_runs": list(interrupted_runs),
        "devices": [result.to_json() for result in results],
    }


def save(document: dict[str, Any], directory: Path) -> Path:
    path = directory / f"erase-{document['run_id']}.json"
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())
    return path
