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
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
import urllib3

from kiln.image.errors import SourceError, SourceTruncatedError
from kiln.resource import Closing

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_READ_BLOCK = 1024 * 1024


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


class _Dropped(Exception):
    """The transfer broke in a way that a new request may fix."""


class HttpSource:
    rereadable = True

    def __init__(
        self, url: str, *, retry: RetryPolicy | None = None,
        session: requests.Session | None = None, verify: bool | str = True,
    ):
        self.description = url
        self.url = url
        self.retry = retry or RetryPolicy()
        self._session = session or requests.Session()
        self._verify = verify
        self._response: requests.Response | None = None
        self._position = 0
        self._validator: str | None = None  # ETag or Last-Modified of the first response
        self._size: int | None = None
        self.resumes = 0  # how many times a broken transfer was picked up again

    def size(self) -> int | None:
        return self._size

    def read_exact(self, offset: int, length: int) -> bytes:
        attempt = 1
        while True:
            try:
                if self._response is None or self._position != offset:
                    self._open(offset)
                return self._read(length)
            except _Dropped as e:
                self._drop()
                if attempt >= self.retry.attempts:
                    raise SourceError(
                        f"{self.url}: giving up after {attempt} attempts at byte {offset}: {e}"
                    ) from e
                delay = self.retry.delay(attempt)
                log.warning("%s: %s; resuming at byte %d in %.1f s", self.url, e, offset, delay)
                self.resumes += 1
                attempt += 1
                time.sleep(delay)

    def _open(self, offset: int) -> None:
        self._drop()
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={offset}-"}
        if self._validator:
            headers["If-Range"] = self._validator
        try:
            response = self._session.get(
                self.url, headers=headers, stream=True, verify=self._verify,
                timeout=(self.retry.connect_timeout, self.retry.read_timeout),
            )
        except requests.RequestException as e:
            raise _Dropped(f"request failed: {e}") from e
        status = response.status_code
        if status == 416:
            response.close()
            raise SourceTruncatedError(f"{self.url} has no byte {offset} (HTTP 416)")
        if status in _RETRY_STATUS:
            response.close()
            raise _Dropped(f"HTTP {status} {response.reason}")
        if status not in (200, 206):
            response.close()
            raise SourceError(f"{self.url}: HTTP {status} {response.reason}")
        if status == 200 and offset != 0:
            response.close()
            raise SourceError(
                f"{self.url}: the server answered a request for byte {offset} onwards with the "
                "whole file: the file changed on the server, or it does not support ranges"
            )
        if status == 206:
            self._check_content_range(response, offset)
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if self._validator is None and validator and not validator.startswith("W/"):
            self._validator = validator
        if self._size is None and status == 200 and "Content-Length" in response.headers:
            self._size = int(response.headers["Content-Length"])
        self._response = response
        self._position = offset

    def _check_content_range(self, response: requests.Response, offset: int) -> None:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            response.close()
            raise SourceError(
                f"{self.url}: asked for byte {offset} onwards, got Content-Range "
                f"{response.headers.get('Content-Range')!r}"
            )
        if match.group(3) != "*":
            self._size = int(match.group(3))

    def _read(self, length: int) -> bytes:
        assert self._response is not None
        raw = self._response.raw
        buffer = bytearray()
        try:
            while len(buffer) < length:
                block = raw.read(min(_READ_BLOCK, length - len(buffer)), decode_content=False)
                if not block:
                    break
                buffer += block
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
            raise _Dropped(f"connection broke after {len(buffer)} of {length} bytes: {e}") from e
        self._position += len(buffer)
        if len(buffer) < length:
            if self._size is not None and self._position >= self._size:
                raise SourceTruncatedError(
                    f"{self.url} ends at byte {self._position}, before byte "
                    f"{self._position - len(buffer) + length}"
                )
            raise _Dropped(f"connection closed after {len(buffer)} of {length} bytes")
        return bytes(buffer)

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def forget_position(self) -> None:
        """Make the next read open a fresh request (after bytes that failed their check)."""
        self._drop()

    def close(self) -> None:
        self._drop()
        self._session.close()


def open_source(location: str | Path, *, retry: RetryPolicy | None = None) -> ByteSource:
    """A path, or an http(s) URL."""
    text = str(location)
    if text.startswith(("http://", "https://")):
        return HttpSource(text, retry=retry)
    return FileSource(Path(location))
