"""Fixtures for the lab's QEMU tests (see guest.py for what the guest is)."""

from __future__ import annotations

import pytest

from lab import Lab
from tests.lab.guest import GuestFiles, build_guest
from tests.workers import one_worker_at_a_time


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> GuestFiles:
    """Built once per session (the kernel and busybox are cached across sessions)."""
    with one_worker_at_a_time(tmp_path_factory, "builds"):
        return build_guest(tmp_path_factory.mktemp("guest"))


@pytest.fixture(scope="session")
def lab() -> Lab:
    return Lab.detect()
