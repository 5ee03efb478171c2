"""A real loopback HTTP server for image downloads, with faults a test switches on.

It serves files from memory with `Range`, `ETag` and `If-Range` like a CDN does, records every
request, and on demand: cuts the connection after N bytes of a response, stalls mid-response,
serves wrong bytes to requests that resume after byte 0, answers with an error status, ignores
ranges, or swaps a file for another version after a cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    if_range: str | None
    status: int

    @property
    def range_start(self) -> int | None:
        match = _RANGE.match(self.range or "")
        return int(match.group(1)) if match else None


@dataclass
class Faults:
    """What goes wrong; lists are consumed one entry per response, in order."""

    drops: list[int] = field(default_factory=list)  # send this many body bytes, then cut
    stalls: list[tuple[int, float]] = field(default_factory=list)  # (after bytes, seconds)
    statuses: list[int] = field(default_factory=list)  # answer with this status instead
    always_status: int | None = None
    wrong_on_resume: set[int] = field(default_factory=set)  # file offsets flipped if start > 0
    wrong_responses: int | None = None  # how many resumed responses get them (None: all)
    ignore_range: bool = False  # always answer 200 with the whole file
    shift_range: int = 0  # answer a resume from this many bytes later than asked
    swap_after_drop: dict[str, bytes] = field(default_factory=dict)  # new version after a cut


class FaultyServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.faults = Faults()
        self._lock = threading.Lock()
        self._httpd = _Server(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, name: str, data: bytes) -> str:
        """Publish `data` as /name; returns its URL."""
        self.files[name] = data
        return f"{self.base_url}/{name}"

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'

    def resumes(self) -> list[Request]:
        return [r for r in self.requests if (r.range_start or 0) > 0]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def pop(self, queue: list[_T]) -> _T | None:
        with self._lock:
            return queue.pop(0) if queue else None


@contextmanager
def running_server() -> Iterator[FaultyServer]:
    server = FaultyServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: FaultyServer):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hang up on purpose in these tests; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads `server.requests` instead."""

    @property
    def owner(self) -> FaultyServer:
        assert isinstance(self.server, _Server)
        return self.server.owner

    def do_GET(self) -> None:
        owner = self.owner
        faults = owner.faults
        name = self.path.lstrip("/")
        requested_range = self.headers.get("Range")
        if_range = self.headers.get("If-Range")

        status = owner.pop(faults.statuses) or faults.always_status
        if status is None and name not in owner.files:
            status = 404
        if status is not None:
            self._record(name, requested_range, if_range, int(status))
            message = f"{HTTPStatus(int(status)).phrase}\n".encode()
            self.send_response(int(status))
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self._write(message)
            return

        data = owner.files[name]
        etag = owner.etag(data)
        match = _RANGE.match(requested_range or "")
        ranged = match is not None and not faults.ignore_range
        if ranged and if_range is not None and if_range != etag:
            ranged = False  # the file changed: RFC 9110 says send all of it
        start, end = 0, len(data)
        if ranged:
            assert match is not None
            start = int(match.group(1))
            if match.group(2):
                end = min(end, int(match.group(2)) + 1)
            if start > 0:
                start += faults.shift_range
            if start >= len(data):
                self._record(name, requested_range, if_range, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = self._maybe_wrong(bytearray(data[start:end]), start)
        status = 206 if ranged else 200
        self._record(name, requested_range, if_range, status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        self._send_body(bytes(body))

    def _maybe_wrong(self, body: bytearray, start: int) -> bytearray:
        faults = self.owner.faults
        if start > 0 and faults.wrong_on_resume and faults.wrong_responses != 0:
            for position in faults.wrong_on_resume:
                if start <= position < start + len(body):
                    body[position - start] ^= 0x20
            if faults.wrong_responses is not None:
                faults.wrong_responses -= 1
        return body

    def _send_body(self, body: bytes) -> None:
        owner = self.owner
        drop = owner.pop(owner.faults.drops)
        stall = owner.pop(owner.faults.stalls)
        if stall is not None:
            after, seconds = stall
            if not self._write(body[:after]):
                return
            time.sleep(seconds)
            body = body[after:]
            if drop is not None:
                drop -= after
        if drop is not None:
            self._write(body[:drop])
            self._cut()
            for swapped, content in owner.faults.swap_after_drop.items():
                owner.files[swapped] = content
            return
        self._write(body)

    def _record(self, name: str, requested_range: str | None, if_range: str | None,
                status: int) -> None:
        self.owner.requests.append(
            Request(path=name, range=requested_range, if_range=if_range, status=status)
        )

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return False
        return True

    def _cut(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
