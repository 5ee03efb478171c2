"""A small synchronous QMP client on top of the asyncio-based `qemu.qmp`.

The `QMPClient` lives on an event loop that runs in a helper thread owned by this object, so
callers (tests, the CLI) stay synchronous and an event loop of their own (a test server, say)
is never touched. `qemu.qmp.legacy.QEMUMonitorProtocol` would instead install an event loop
in the calling thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError

from lab.errors import QmpError

log = logging.getLogger(__name__)

T = TypeVar("T")
COMMAND_TIMEOUT = 30.0
_RETRY_SECONDS = 0.05


class Qmp:
    """A QMP connection to one QEMU. Close it (or use it as a context manager)."""

    def __init__(self, socket: Path, *, name: str = "lab"):
        self.socket = socket
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{name}", daemon=True
        )
        self._thread.start()
        self._client: QMPClient = self._call(self._make_client(name), timeout=10)
        self._listener: EventListener | None = None

    @staticmethod
    async def _make_client(name: str) -> QMPClient:
        return QMPClient(name)  # made on the loop it will run on

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise QmpError(f"QMP on {self.socket}: no answer within {timeout:g} s") from None

    def connect(self, *, timeout: float, alive: Callable[[], bool]) -> None:
        """Connect and negotiate, retrying while the socket is not there yet (QEMU creates
        it a moment after it starts). Gives up when `alive()` turns false or on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call(self._client.connect(str(self.socket)), timeout=timeout)
            except ConnectError as e:
                if not alive():
                    raise QmpError(f"QEMU exited before QMP on {self.socket} answered") from e
                if time.monotonic() >= deadline:
                    raise QmpError(f"cannot connect to QMP on {self.socket}: {e}") from e
                time.sleep(_RETRY_SECONDS)
            else:
                self._listener = EventListener()
                self._client.register_listener(self._listener)
                return

    def execute(
        self, command: str, arguments: dict[str, object] | None = None, *,
        timeout: float = COMMAND_TIMEOUT,
    ) -> object:
        """Run a QMP command and return its `return` value."""
        try:
            return self._call(self._client.execute(command, arguments), timeout=timeout)
        except ExecuteError as e:
            raise QmpError(f"QMP {command} failed: {e.error_class}: {e}") from e
        except (QMPError, OSError, EOFError) as e:
            raise QmpError(f"QMP {command}: connection lost ({type(e).__name__}: {e})") from e

    def status(self) -> str:
        """The run state: running, paused, shutdown, guest-panicked, …"""
        answer = self.execute("query-status")
        assert isinstance(answer, dict)
        return str(answer["status"])

    def wait_event(self, name: str, *, timeout: float) -> dict[str, Any]:
        """The next event called `name` since connecting (earlier ones of other names are
        dropped)."""
        listener = self._listener
        if listener is None:
            raise QmpError("QMP is not connected")

        async def next_event() -> dict[str, Any]:
            while True:
                event = await listener.get()
                if event["event"] == name:
                    return dict(event)

        try:
            return self._call(next_event(), timeout=timeout)
        except QmpError:
            raise QmpError(f"no QMP event {name} within {timeout:g} s") from None

    def close(self) -> None:
        """Disconnect (an already dead QEMU is fine) and stop the helper thread."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(QMPError, OSError, EOFError, QmpError):
            # After `quit` or a killed QEMU, disconnect re-raises the reader's EOFError.
            self._call(self._client.disconnect(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
