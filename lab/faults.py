"""A flaky link for the lab: a TCP proxy on 127.0.0.1 (the guest reaches it as 10.0.2.2) in
front of an HTTP server, which cuts the first response to a chosen path after so many bytes.

`DroppingProxy(upstream_port=…, path_part="initrd", drop_after_bytes=4 << 20)` forwards every
connection to the upstream port; the first `GET` whose path contains `path_part` has its
response cut (both sockets closed) once that many bytes went back. Every request line and its
`Range` header are recorded, so a test can see the client come back for the rest.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self

_REQUEST = re.compile(rb"^(GET|HEAD|POST|PUT) (\S+) HTTP/1\.[01]\r\n", re.MULTILINE)
_RANGE = re.compile(rb"^Range: *(\S+)\r\n", re.IGNORECASE | re.MULTILINE)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    range: str | None


class _Link:
    """One client connection and its upstream."""

    def __init__(self, proxy: DroppingProxy, client: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream = socket.create_connection(("127.0.0.1", proxy.upstream_port), timeout=10)
        self.upstream.settimeout(None)
        self.armed = False  # the response now flowing back is the one to cut
        self.sent_back = 0

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def to_upstream(self) -> None:
        try:
            while data := self.client.recv(_CHUNK):
                for match in _REQUEST.finditer(data):
                    ranged = _RANGE.search(data, match.end())
                    seen = SeenRequest(method=match.group(1).decode(),
                                       path=match.group(2).decode(),
                                       range=ranged.group(1).decode() if ranged else None)
                    if self.proxy.record(seen):
                        self.armed = True
                self.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def to_client(self) -> None:
        try:
            while data := self.upstream.recv(_CHUNK):
                if self.armed:
                    room = self.proxy.drop_after_bytes - self.sent_back
                    if len(data) >= room:
                        self.client.sendall(data[:room])
                        self.proxy.dropped.set()
                        break
                    self.sent_back += len(data)
                self.client.sendall(data)
        except OSError:
            pass
        finally:
            self.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class DroppingProxy:
    def __init__(self, *, upstream_port: int, path_part: str, drop_after_bytes: int,
                 port: int = 0):
        self.upstream_port = upstream_port
        self.path_part = path_part
        self.drop_after_bytes = drop_after_bytes
        self.dropped = threading.Event()  # set once the cut happened
        self._lock = threading.Lock()
        self._armed_once = False
        self._seen: list[SeenRequest] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    link = _Link(proxy, self.request)
                except OSError:  # the upstream is down: so is the link, as the client sees
                    return
                back = threading.Thread(target=link.to_client, daemon=True)
                back.start()
                link.to_upstream()
                back.join()

        self._server = _Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def record(self, seen: SeenRequest) -> bool:
        """Note a request; True when its response is the one to cut."""
        with self._lock:
            self._seen.append(seen)
            if (not self._armed_once and seen.method == "GET"
                    and self.path_part in seen.path):
                self._armed_once = True
                return True
            return False

    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
