"""Image bytes over HTTP(S): one streaming response while reads are sequential; a dropped
connection is picked up with a Range request at the start of the block being read (the reader
asks frame by frame, so a resume restarts at a frame boundary, never at zero), with bounded
retries and back-off. `If-Range` pins a resumed request to the same version of the file.
"""

from __future__ import annotations

import logging
import re
import time

import requests
import urllib3

from kiln.image.errors import SourceError, SourceTruncatedError
from kiln.image.source import RetryPolicy

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_READ_BLOCK = 1024 * 1024


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
