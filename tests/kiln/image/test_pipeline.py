from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kiln.image.pipeline import prefetch


def test_items_arrive_in_order() -> None:
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_the_producer_runs_in_another_thread() -> None:
    names: list[str] = []

    def produce() -> Iterator[int]:
        names.append(threading.current_thread().name)
        yield 1

    assert list(prefetch(produce())) == [1]
    assert names == ["kiln-prefetch"]


def test_an_error_arrives_after_the_items_before_it() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("frame 2 is bad")

    items = prefetch(produce())
    assert [next(items), next(items)] == [1, 2]
    with pytest.raises(ValueError, match="frame 2 is bad"):
        next(items)


def test_closing_early_stops_the_producer() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def produce() -> Iterator[int]:
        try:
            for number in range(1000):
                produced.append(number)
                yield number
        finally:
            closed.set()

    items = prefetch(produce(), depth=2)
    assert next(items) == 0
    items.close()
    assert closed.wait(5)
    assert len(produced) <= 5  # the one taken, the queue's two, one waiting, one in hand
