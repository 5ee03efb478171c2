"""Where image bytes come from: a local file, or an HTTP(S) URL read with resumable ranges.

A source answers one question, `read_exact(offset, length)`. Over HTTP it keeps one streaming
response open while reads are sequential; if the connection drops, it reopens with a Range
request at the start of the block that was being read (the reader asks frame by frame, so a
resume restarts at a frame boundary, never at zero), with bounded retries and back-off.
`If-Range` pins the resumed request to the same version of the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kiln.image.errors import SourceError, SourceTruncatedError
from kiln.resource import Closing

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay: float = 0.5
    max_delay: float = 15.0
    connect_timeout: float = 10.0
    read_timeout: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay, self.first_delay * 2 ** (attempt - 1)))


class ByteSource(Protocol):
    description: str
    # Whether reading the same range again may give other bytes (a network), so a frame
    # whose checksum failed is worth one more read.
    rereadable: bool

    def read_exact(self, offset: int, length: int) -> bytes: ...

    def size(self) -> int | None: ...

    def forget_position(self) -> None: ...

    def close(self) -> None: ...


class FileSource(Closing):
    rereadable = False

    def __init__(self, path: Path):
        self.description = str(path)
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError(f"cannot open {path}: {e.strerror}") from e

    def read_exact(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while got < length:  # a short read is legal for large requests; EOF is an empty read
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                raise SourceTruncatedError(
                    f"{self.description} ends at byte {offset + got}, before byte "
                    f"{offset + length}"
                )
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def forget_position(self) -> None:
        """Nothing to forget: every read is positioned."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_source(location: str | Path, *, retry: RetryPolicy | None = None) -> ByteSource:
    """A path, or an http(s) URL."""
    text = str(location)
    if text.startswith(("http://", "https://")):
        # Imported here: requests and its TLS stack cost start-up time that a local file,
        # the common case on the appliance, should not pay.
        from kiln.image.http import HttpSource  # noqa: PLC0415

        return HttpSource(text, retry=retry)
    return FileSource(Path(location))
