"""Power cuts at seeded moments in a run of the Kiln ramdisk, for the QEMU tests of restore
(and erase: a test names its own milestones and checks its own outcome).

The run's console lines carry the guest's uptime (`[  18.920] kiln: …`). One uncut run
gives the *windows*: the time between consecutive milestone lines (e.g. for restore: the
attempt begun → PRIMARY mounted → configured → …). A cut point is a window plus a random
delay within that window's measured length; cut points go round the windows in order, so
even a handful covers every window and more cuts revisit each at other moments. On the
cut run the host follows the console within milliseconds, waits for the window's first line,
sleeps the delay and kills QEMU (a power cut: what QEMU wrote stays written, nothing more).

    settings = CutSettings.from_env()           # KILN_POWER_CUTS, KILN_POWER_CUT_SEED
    windows = measure_windows(uncut_console, MILESTONES)
    for point in draw_cuts(settings, windows):
        with lab.vm(spec) as vm:
            cut = cut_at(vm, point, start=r"kiln: decision: restore")
        boots = boot_until_settled(lab, [spec], settled=OS_LINE, work=..., name=...,
                                   max_boots=3)
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab import Lab
from lab.errors import LabError
from lab.spec import VmSpec
from lab.vm import Vm

ENV_COUNT = "KILN_POWER_CUTS"
ENV_SEED = "KILN_POWER_CUT_SEED"
DEFAULT_COUNT = 6  # a cut in each of the six windows restore and erase have; each costs 2-4 boots
DEFAULT_SEED = 6006
CUT_POLL_SECONDS = 0.002  # how often the console is read while a cut is armed

DECISION = r"kiln: decision: ([a-z]+)"
# The ramdisk's last words before it reboots (restore, erase, manufacture, a crash).
END_OF_RUN = r"kiln: ([^\r\n]*); rebooting in [0-9.]+ s"
_STAMP = re.compile(r"\[\s*(\d+\.\d+)\]")


@dataclass(frozen=True, kw_only=True)
class CutSettings:
    count: int
    seed: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CutSettings:
        env = os.environ if environ is None else environ
        values = {}
        for name, default in ((ENV_COUNT, DEFAULT_COUNT), (ENV_SEED, DEFAULT_SEED)):
            text = env.get(name, "").strip()
            try:
                values[name] = int(text) if text else default
            except ValueError:
                raise ValueError(f"{name}={text!r}: expected an integer") from None
        if values[ENV_COUNT] < 1:
            raise ValueError(f"{ENV_COUNT}={values[ENV_COUNT]}: expected at least 1")
        return cls(count=values[ENV_COUNT], seed=values[ENV_SEED])


@dataclass(frozen=True, kw_only=True)
class Milestone:
    """A console line (a regex) that opens the window `name`; the last milestone of a list
    only closes the window before it."""

    name: str
    pattern: str


@dataclass(frozen=True, kw_only=True)
class Window:
    name: str
    anchor: str  # the pattern of the line that opens it
    seconds: float  # its length in the uncut run


@dataclass(frozen=True, kw_only=True)
class CutPoint:
    index: int
    window: str
    anchor: str
    delay: float  # seconds after the anchor line

    def describe(self) -> str:
        return f"cut {self.index}: {self.delay * 1000:.0f} ms into '{self.window}'"


def stamp(line: str) -> float:
    """The guest's uptime a ramdisk console line carries."""
    found = _STAMP.search(line)
    if found is None:
        raise LabError(f"no uptime stamp in console line {line!r}")
    return float(found.group(1))


def measure_windows(console: str, milestones: Sequence[Milestone]) -> tuple[Window, ...]:
    """The windows between consecutive milestones, from the console of an uncut run (each
    milestone looked for after the one before)."""
    if len(milestones) < 2:
        raise ValueError("windows need at least two milestones")
    times: list[float] = []
    position = 0
    for milestone in milestones:
        found = re.compile(f"^.*{milestone.pattern}.*$", re.MULTILINE).search(console, position)
        if found is None:
            raise LabError(f"the uncut run's console has no line for milestone "
                           f"'{milestone.name}' ({milestone.pattern!r}) after byte {position}")
        times.append(stamp(found.group(0)))
        position = found.end()
    return tuple(Window(name=milestone.name, anchor=milestone.pattern,
                        seconds=max(0.0, end - begin))
                 for milestone, begin, end in zip(milestones, times, times[1:], strict=False))


def draw_cuts(settings: CutSettings, windows: Sequence[Window]) -> tuple[CutPoint, ...]:
    """`settings.count` cut points: round the windows in order, each a seeded uniform delay
    within its window."""
    rng = random.Random(settings.seed)  # noqa: S311 - a repeatable schedule, not secrets
    points = []
    for index in range(settings.count):
        window = windows[index % len(windows)]
        points.append(CutPoint(index=index, window=window.name, anchor=window.anchor,
                               delay=rng.uniform(0.0, window.seconds)))
    return tuple(points)


@dataclass(frozen=True, kw_only=True)
class CutRun:
    point: CutPoint
    running: bool  # QEMU still ran when the power went (False: the run ended first)
    late: float  # seconds the cut came after the moment planned (the host's own latency)
    last_line: str  # the console's last ramdisk line before the cut
    console: str = field(repr=False)


def cut_at(vm: Vm, point: CutPoint, *, start: str, timeout: float = 600.0) -> CutRun:
    """Wait for `start` (e.g. the decision line; it may be the anchor itself), then for the
    point's anchor line, sleep its delay and cut the power."""
    if point.anchor != start:
        vm.wait_for(start, timeout=timeout)
    vm.wait_for(point.anchor, timeout=timeout, poll=CUT_POLL_SECONDS)
    seen = time.monotonic()
    time.sleep(max(0.0, point.delay - (time.monotonic() - seen)))
    late = time.monotonic() - seen - point.delay
    running = vm.running
    vm.power_cut()
    console = vm.console_text()
    lines = [line for line in console.splitlines() if "kiln:" in line]
    return CutRun(point=point, running=running, late=late,
                  last_line=lines[-1].strip() if lines else "", console=console)


@dataclass(frozen=True, kw_only=True)
class Boot:
    decision: str
    outcome: str  # the settled line, or the ramdisk's last words before its reboot
    settled: bool
    console: str = field(repr=False)


def boot_until_settled(lab: Lab, specs: Sequence[VmSpec], *, settled: str, work: Path,
                       name: str, max_boots: int, timeout: float = 600.0) -> list[Boot]:
    """Boot again and again (no cuts) until the console shows `settled` (e.g. the OS's own
    line): boot N as `specs[N]`, the last spec for every boot after. Each console is kept in
    `work` as NAME-N.txt. Raises `LabError` when `max_boots` boots do not settle."""
    boots: list[Boot] = []
    while len(boots) < max_boots:
        with lab.vm(specs[min(len(boots), len(specs) - 1)]) as vm:
            decision = vm.wait_for(DECISION, timeout=timeout).group(1)
            outcome = vm.wait_for(f"(?:{settled})|(?:{END_OF_RUN})", timeout=timeout)
            vm.wait_exit(timeout=timeout)
            console = vm.console_text()
        (work / f"{name}-{len(boots) + 1}.txt").write_text(console)
        if "Kernel panic" in console:
            raise LabError(f"{name}: boot {len(boots) + 1} ended in a kernel panic")
        is_settled = re.fullmatch(settled, outcome.group(0)) is not None
        boots.append(Boot(decision=decision, outcome=outcome.group(0).strip(),
                          settled=is_settled, console=console))
        if is_settled:
            return boots
    raise LabError(f"{name}: not settled after {max_boots} boots: "
                   + "; ".join(f"{boot.decision} → {boot.outcome}" for boot in boots))


@dataclass(kw_only=True)
class Tally:
    """How many cut points a module tried and how many converged."""

    settings: CutSettings
    tried: int = 0
    converged: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"power cuts: tried {self.tried}, converged {self.converged} "
                f"(seed {self.settings.seed})")
