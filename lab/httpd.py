"""A host-side HTTP file server for PXE and downloads in the lab.

It serves one directory on 127.0.0.1 (a free port), which a guest on QEMU's user-mode network
reaches as `10.0.2.2`. GET and HEAD, single `Range: bytes=…` requests (206/416), one thread
per connection. It records the paths requested so tests can tell what the guest fetched.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from lab.errors import LabError

log = logging.getLogger(__name__)

GUEST_HOST = "10.0.2.2"  # the host's 127.0.0.1 as slirp shows it to the guest
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 256 * 1024


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a `Range` header asks of a `size`-byte file; None when it
    cannot be satisfied. Raises ValueError for a header this server does not support
    (several ranges, other units), which is then answered with the whole file."""
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise ValueError(header)
    first, last = match.group(1), match.group(2)
    if not first:  # a suffix: the last N bytes
        length = int(last)
        return (max(size - length, 0), size - 1) if length and size else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end else None


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        self.server.record(self.path)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND, "not found")
            return
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            span = (0, size - 1)
            status = HTTPStatus.OK
            header = self.headers.get("Range")
            if header is not None:
                try:
                    wanted = parse_range(header, size)
                except ValueError:
                    wanted = span
                else:
                    status = HTTPStatus.PARTIAL_CONTENT
                if wanted is None:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                span = wanted
            length = span[1] - span[0] + 1 if size else 0
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if status is HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {span[0]}-{span[1]}/{size}")
            self.end_headers()
            if body and length:
                handle.seek(span[0])
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    _copy(handle, self.wfile, length)


def _copy(source: BinaryIO, target: Any, length: int) -> None:
    while length > 0:
        block = source.read(min(_CHUNK, length))
        if not block:
            return
        target.write(block)
        length -= len(block)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path):
        super().__init__(address, functools.partial(_Handler, directory=str(root)))
        self._lock = threading.Lock()
        self._requests: list[str] = []

    def record(self, path: str) -> None:
        with self._lock:
            self._requests.append(path)

    def requests(self) -> list[str]:
        with self._lock:
            return list(self._requests)


class HttpServer:
    """Serve `root` on 127.0.0.1 while the `with` block runs."""

    def __init__(self, root: Path, *, port: int = 0):
        if not root.is_dir():
            raise LabError(f"HTTP root {root} is not a directory")
        self.root = root.resolve()
        self._server = _Server(("127.0.0.1", port), self.root)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lab-httpd", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL for the host."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def guest_url(self) -> str:
        """The base URL for a guest on QEMU's user-mode network."""
        return f"http://{GUEST_HOST}:{self.port}"

    @property
    def requests(self) -> list[str]:
        """The paths asked for so far, in order."""
        return self._server.requests()

    def publish(self, source: Path, name: str | None = None) -> str:
        """Copy `source` into the served directory (as `name`); return its guest URL."""
        target = self.root / (name or source.name)
        shutil.copyfile(source, target)
        return f"{self.guest_url}/{target.relative_to(self.root).as_posix()}"

    def start(self) -> Self:
        self._thread.start()
        log.info("serving %s on %s", self.root, self.url)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
