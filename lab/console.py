"""The serial console QEMU writes to a file: read it, wait for patterns, follow it live."""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from lab.errors import ConsoleTimeout, VmExited

POLL_SECONDS = 0.1
TAIL_LINES = 30
_ESCAPES = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1bc|\x08 \x08|\x08")


def readable(text: str) -> str:
    """Console text without terminal escape sequences, erasing backspaces and carriage
    returns (OVMF and iPXE draw their screens with them)."""
    return _ESCAPES.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


class Console:
    """The text of one console log. `wait_for` searches from the end of its last match, so
    successive waits follow the boot in order (`from_start=True` searches everything)."""

    def __init__(self, path: Path):
        self.path = path
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._offset = 0  # bytes of the file decoded so far
        self._text = ""
        self._cursor = 0  # where the next wait_for starts searching

    def text(self) -> str:
        """Everything the console showed so far (as written: escapes included)."""
        self._read()
        return self._text

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(readable(self.text()).rstrip("\n").splitlines()[-lines:])

    def _read(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        self._text += self._decoder.decode(data)

    def wait_for(
        self,
        pattern: str | re.Pattern[str],
        *,
        timeout: float,
        exit_status: Callable[[], int | None],
        describe_exit: Callable[[], str] = lambda: "",
        from_start: bool = False,
        poll: float = POLL_SECONDS,
    ) -> re.Match[str]:
        """The first match of `pattern` (a regex; MULTILINE when given as text) after the
        last match, looked for every `poll` seconds. Raises `ConsoleTimeout` after `timeout`
        seconds and `VmExited` as soon as `exit_status()` (QEMU's exit code, or None while it
        runs) says QEMU is gone and the console it left does not match. Both errors quote the
        console's tail."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        start = 0 if from_start else self._cursor
        while True:
            status = exit_status()  # before reading: what QEMU wrote before exiting counts
            self._read()
            match = regex.search(self._text, start)
            if match:
                self._cursor = match.end()
                return match
            if status is not None:
                detail = describe_exit()
                raise VmExited(
                    f"QEMU exited (status {status}) before the console showed "
                    f"{regex.pattern!r}{detail}\n--- console tail ({self.path}) ---\n"
                    f"{self.tail()}"
                )
            if time.monotonic() >= deadline:
                raise ConsoleTimeout(
                    f"the console did not show {regex.pattern!r} within {timeout:.1f} s\n"
                    f"--- console tail ({self.path}) ---\n{self.tail()}"
                )
            time.sleep(poll)


def follow(
    path: Path, out: BinaryIO, *, running: Callable[[], bool], poll: float = POLL_SECONDS
) -> None:
    """Copy the console to `out` as it grows, until `running()` is false and all is copied."""
    offset = 0
    while True:
        alive = running()
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        if data:
            offset += len(data)
            out.write(data)
            out.flush()
        if not alive:
            return
        if not data:
            time.sleep(poll)
