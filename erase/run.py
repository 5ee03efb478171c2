"""Erase one region: canaries first, then each method in turn (strongest first) until one
succeeds and no canary survives it; every attempt, failed or not, is kept for the
certificate. A method that exits with success while canaries survive (a discard that the
device ignores, a format that did not reach the medium) is a failed attempt, and the next
method follows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from erase import canary
from erase.capabilities import Capabilities, Method
from erase.methods import MethodFailed, Progress, Region, carry_out

log = logging.getLogger(__name__)

Announce = Callable[[str], None]  # a line for the console and the event log


@dataclass(frozen=True, kw_only=True)
class Attempt:
    method: Method
    ok: bool
    detail: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"method": str(self.method), "result": "passed" if self.ok else "failed",
                "detail": self.detail, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True, kw_only=True)
class RegionResult:
    region: Region
    capabilities: Capabilities
    attempts: tuple[Attempt, ...]
    canaries_written: int
    canaries_surviving: int
    started_ns: int
    finished_ns: int

    @property
    def method(self) -> Method | None:
        """The method that erased the region, verified; None when every one failed."""
        last = self.attempts[-1] if self.attempts else None
        return last.method if last is not None and last.ok else None

    @property
    def verified(self) -> bool:
        return self.method is not None and self.canaries_surviving == 0

    def to_json(self) -> dict[str, Any]:
        disk = self.capabilities.disk
        method = self.method
        seconds = next((a.seconds for a in reversed(self.attempts) if a.ok), 0.0)
        return {
            "target": self.region.name, "node": str(self.region.node),
            "scope": str(self.capabilities.scope), "model": disk.model, "serial": disk.serial,
            "transport": str(disk.transport), "size_bytes": self.region.size_bytes,
            "method": str(method) if method else None,
            "nist_category": method.nist_category if method else None,
            "verification": "passed" if self.verified else "failed",
            "canaries": f"{self.canaries_written - self.canaries_surviving} of "
                        f"{self.canaries_written} gone",
            "rate_mib_s": round(self.region.size_bytes / seconds / 2**20, 1) if seconds else None,
            "started_ns": self.started_ns, "finished_ns": self.finished_ns,
            "attempts": [attempt.to_json() for attempt in self.attempts],
            "passed_over": list(self.capabilities.passed_over),
        }


class Carry(Protocol):
    def __call__(self, method: Method, region: Region, capabilities: Capabilities, *,
                 progress: Progress, root: Path) -> str: ...


def erase_region(region: Region, capabilities: Capabilities, *, run_id: str,
                 progress: Progress, announce: Announce, root: Path = Path("/"),
                 carry: Carry = carry_out) -> RegionResult:
    started_ns = time.time_ns()
    placed = canary.place(region.node, size_bytes=region.size_bytes, run_id=run_id)
    canary.write(placed)
    attempts: list[Attempt] = []
    surviving: tuple[int, ...] = placed.offsets
    for method in capabilities.methods:
        announce(f"{region.name} ({region.node}): {method}")
        began = time.monotonic()
        try:
            detail = carry(method, region, capabilities, progress=progress, root=root)
            surviving = canary.surviving(placed)
        except (MethodFailed, OSError) as e:
            attempts.append(Attempt(method=method, ok=False, detail=str(e),
                                    seconds=time.monotonic() - began))
            announce(f"{region.name}: {method} failed ({e}); falling back")
            continue
        seconds = time.monotonic() - began
        if surviving:
            detail = (f"{detail}, but {len(surviving)} of {len(placed.offsets)} canaries "
                      "survived")
            attempts.append(Attempt(method=method, ok=False, detail=detail, seconds=seconds))
            announce(f"{region.name}: {method}: {detail}; falling back")
            continue
        attempts.append(Attempt(method=method, ok=True, detail=detail, seconds=seconds))
        announce(f"{region.name}: erased with {method} in {seconds:.1f} s; "
                 f"{len(placed.offsets)} canaries written, none survived")
        break
    return RegionResult(region=region, capabilities=capabilities, attempts=tuple(attempts),
                        canaries_written=len(placed.offsets),
                        canaries_surviving=len(surviving), started_ns=started_ns,
                        finished_ns=time.time_ns())
