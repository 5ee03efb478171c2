from __future__ import annotations

from collections.abc import Iterator

import pytest

from kiln.image.source import RetryPolicy
from tests.kiln.image.httpserver import FaultyServer, running_server


@pytest.fixture
def http_server() -> Iterator[FaultyServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def fast_retry() -> RetryPolicy:
    """Real retries and back-off, in milliseconds instead of seconds."""
    return RetryPolicy(
        attempts=4, first_delay=0.01, max_delay=0.04, connect_timeout=2.0, read_timeout=2.0
    )
