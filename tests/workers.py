"""What the pytest-xdist workers of one run share (`tools/test` runs two, so that two VMs
boot at a time): a directory in the run's base temp, and a lock for the work only one of
them should do (the signing keys, and builds whose inputs and cache they share — the second
worker waits, then finds the first one's build in the cache)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's base temp: every worker's own base temp sits in it (`popen-gwN`)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def one_worker_at_a_time(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """Hold the run-wide lock `name` (blocking); yields the shared directory."""
    directory = shared_dir(tmp_path_factory)
    with (directory / f".{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


SUMMARY = "summary.txt"


def report(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    """Lines for the run's final summary (`pytest_terminal_summary` in tests/conftest.py):
    a worker's own terminal output never reaches the run's."""
    with one_worker_at_a_time(tmp_path_factory, "summary") as shared, \
            (shared / SUMMARY).open("a") as handle:
        handle.writelines(f"{line}\n" for line in lines)


def summary_lines(config: pytest.Config) -> list[str]:
    """What the workers reported, read by the controller (its base temp is theirs' parent)."""
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return []
    path: Path = factory.getbasetemp() / SUMMARY
    try:
        return path.read_text().splitlines()
    except OSError:
        return []
