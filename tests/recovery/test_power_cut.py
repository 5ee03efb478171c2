"""The power-cut driver's parts that need no VM: settings, windows, the seeded schedule."""

from __future__ import annotations

import pytest

from lab.errors import LabError
from tests.recovery.power_cut import (
    DEFAULT_COUNT,
    DEFAULT_SEED,
    CutSettings,
    Milestone,
    Window,
    draw_cuts,
    measure_windows,
)

CONSOLE = """\
[  18.130] kiln: decision: restore (a restore was requested on RECOVERY) at 18.120 s
[  18.920] kiln: restore: demo 3.1.0 (build 0) onto /dev/vda2
[   18.931] EXT4-fs (vda1): a kernel line
[  19.320] kiln: + mount -t ext4 -o rw,noatime /dev/vda2 /run/kiln/primary
[  20.130] kiln: restore: configured: hostname kiln-cut-0001
[  20.340] kiln: restore succeeded: demo 3.1.0 (build 0) restored in 1.8 s
"""
MILESTONES = (
    Milestone(name="prepare", pattern=r"kiln: decision: restore"),
    Milestone(name="format", pattern=r"kiln: restore: .* onto "),
    Milestone(name="write", pattern=r"kiln: \+ mount -t ext4 "),
    Milestone(name="close", pattern=r"kiln: restore: configured: "),
    Milestone(name="end", pattern=r"kiln: restore succeeded: "),
)


def test_settings_come_from_the_environment() -> None:
    assert CutSettings.from_env({}) == CutSettings(count=DEFAULT_COUNT, seed=DEFAULT_SEED)
    assert CutSettings.from_env({"KILN_POWER_CUTS": " 12 ", "KILN_POWER_CUT_SEED": "7"}) \
        == CutSettings(count=12, seed=7)
    with pytest.raises(ValueError, match="KILN_POWER_CUTS='many': expected an integer"):
        CutSettings.from_env({"KILN_POWER_CUTS": "many"})
    with pytest.raises(ValueError, match="expected at least 1"):
        CutSettings.from_env({"KILN_POWER_CUTS": "0"})


def test_windows_are_the_times_between_milestones() -> None:
    windows = measure_windows(CONSOLE, MILESTONES)
    assert [(w.name, round(w.seconds, 3)) for w in windows] == [
        ("prepare", 0.79), ("format", 0.4), ("write", 0.81), ("close", 0.21)]
    assert windows[1].anchor == MILESTONES[1].pattern


def test_milestones_are_found_in_order() -> None:
    backwards = (MILESTONES[3], MILESTONES[0])
    with pytest.raises(LabError, match="no line for milestone 'prepare'"):
        measure_windows(CONSOLE, backwards)


def test_cuts_go_round_the_windows_at_seeded_delays_within_each() -> None:
    windows = (Window(name="a", anchor="A", seconds=0.5), Window(name="b", anchor="B", seconds=2),
               Window(name="c", anchor="C", seconds=0.04))
    points = draw_cuts(CutSettings(count=7, seed=1), windows)
    assert [point.window for point in points] == ["a", "b", "c", "a", "b", "c", "a"]
    assert [point.index for point in points] == list(range(7))
    for point in points:
        window = next(w for w in windows if w.name == point.window)
        assert 0 <= point.delay <= window.seconds and point.anchor == window.anchor
    assert draw_cuts(CutSettings(count=7, seed=1), windows) == points  # repeatable
    assert draw_cuts(CutSettings(count=7, seed=2), windows) != points
