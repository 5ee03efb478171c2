"""Run a producer in a background thread so reading, checking and writing overlap.

The heavy steps of reading an image (network or disk reads, sha256, zstd) release the GIL, so
a producer thread and a consumer in the caller's thread use two cores the way the stock
`zstd -dc | tar -x` pipeline does.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

Item = TypeVar("Item")

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterator[Item], *, depth: int = 2) -> Generator[Item, None, None]:
    """Yield `items`, produced up to `depth` ahead in a thread; errors surface in order.

    Closing the returned generator early stops the producer before it reads any further.
    """
    channel: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        channel.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            channel.put(_END)
        except BaseException as e:
            channel.put(_Failure(e))

    worker = threading.Thread(target=produce, name="kiln-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = channel.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            try:
                channel.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
        close = getattr(items, "close", None)
        if close is not None:
            close()
