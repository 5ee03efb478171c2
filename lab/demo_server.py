"""The demo's `kiln server`: a real server process on its embedded SQLite in a scratch
directory, its first admin, and the few API calls the demo makes as an operator would
(push an image, store the boot files, make a profile, read a unit's record, follow its
event stream)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from kiln.errors import KilnError
from kiln.process import Spawned, run, spawn
from lab.demo_report import parse_admin
from lab.httpd import GUEST_HOST

KILN = (sys.executable, "-m", "kiln.cli")
TIMEOUT = 60.0
_STREAM_READ_SECONDS = 10.0  # the server sends a keep-alive every half second


class DemoServerError(KilnError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, kw_only=True)
class Admin:
    username: str
    password: str
    token: str


class DemoServer:
    """`kiln server --data-dir DIR` on 127.0.0.1:PORT; guests reach it at 10.0.2.2:PORT."""

    def __init__(self, data_dir: Path, *, port: int, log_file: Path):
        self.data_dir = data_dir
        self.port = port
        self.log_file = log_file
        self._process: Spawned | None = None
        self._stack = contextlib.ExitStack()
        self._session = requests.Session()
        self.admin: Admin | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def guest_url(self) -> str:
        return f"http://{GUEST_HOST}:{self.port}"

    def _server_argv(self) -> list[str]:
        return [*KILN, "server", "--data-dir", str(self.data_dir)]

    def create_admin(self, username: str) -> Admin:
        output = run([*self._server_argv(), "create-admin", username], timeout=TIMEOUT).text
        password, token = parse_admin(output)
        self.admin = Admin(username=username, password=password, token=token)
        self._session.headers["Authorization"] = f"Bearer {token}"
        return self.admin

    def trust(self, public_key: Path) -> None:
        keys = self.data_dir / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(public_key, keys / public_key.name)

    def start(self) -> None:
        argv = [*self._server_argv(), "--listen", f"127.0.0.1:{self.port}",
                "--public-url", self.guest_url]
        self._process = self._stack.enter_context(spawn(argv))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self._process.process.poll() is not None:
                self.save_log()
                raise DemoServerError(f"kiln server exited with status "
                                      f"{self._process.process.returncode}; its log: "
                                      f"{self.log_file}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthz", timeout=2).ok:
                    return
            time.sleep(0.2)
        raise DemoServerError(f"kiln server did not answer /healthz in {TIMEOUT:.0f} s; "
                              f"its log: {self.log_file}")

    def save_log(self) -> None:
        """Copy what the server logged so far (JSON lines) to `log_file`."""
        if self._process is not None:
            self.log_file.write_bytes(self._process.stderr_output())

    def stop(self) -> None:
        if self._process is None:
            return
        process = self._process.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self.save_log()
        self._stack.close()
        self._process = None
        self._session.close()

    # -- the API ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = self._session.request(method, f"{self.url}{path}", timeout=TIMEOUT,
                                           **kwargs)
        except requests.RequestException as e:
            raise DemoServerError(f"{method} {path}: {e}") from e
        if not answer.ok:
            raise DemoServerError(f"{method} {path} answered {answer.status_code}: "
                                  f"{answer.text[:2000]}")
        return answer.json() if answer.content else None

    def push_image(self, image: Path) -> str:
        with image.open("rb") as body:
            answer = self._call("POST", "/api/v1/images", data=body)
        return str(answer["id"])

    def put_file(self, name: str, path: Path) -> None:
        with path.open("rb") as body:
            self._call("PUT", f"/api/v1/files/{name}", data=body)

    def put_profile(self, name: str, manufdata: Mapping[str, Any], *, kernel_file: str,
                    initrd_file: str) -> str:
        """Create profile NAME; return its line key."""
        answer = self._call("PUT", f"/api/v1/profiles/{name}", json={
            "manufdata": manufdata, "kernel_file": kernel_file, "initrd_file": initrd_file,
            "kernel_args": "console=ttyS0,115200"})
        key = answer.get("line_key") or self._call(
            "POST", f"/api/v1/profiles/{name}/line-key")["line_key"]
        return str(key)

    def unit(self, serial: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", f"/api/v1/units/{serial}")
        return found

    def unit_page(self, serial: str) -> str:
        return f"{self.url}/ui/units/{serial}"

    def stream_url(self, serial: str) -> str:
        return f"{self.url}/api/v1/units/{serial}/stream"

    def follow(self, serial: str, on_event: Callable[[dict[str, Any]], None]) -> EventFollower:
        follower = EventFollower(self, serial=serial, on_event=on_event)
        follower.start()
        return follower

    def stream(self, serial: str, *, after: int, stop: threading.Event
               ) -> Iterator[dict[str, Any]]:
        """The unit's events from its server-sent event stream, until `stop` is set."""
        headers = {"Authorization": str(self._session.headers["Authorization"])}
        with requests.get(self.stream_url(serial), params={"after": after}, headers=headers,
                          stream=True, timeout=(5, _STREAM_READ_SECONDS)) as answer:
            if answer.status_code == 404:
                return  # the unit has not reported itself yet
            answer.raise_for_status()
            for line in answer.iter_lines(decode_unicode=True):
                if stop.is_set():
                    return
                if line and line.startswith("data: "):
                    yield json.loads(line[len("data: "):])


class EventFollower:
    """A thread that follows a unit's event stream (waiting for the unit to appear) and
    hands each event to `on_event`, until stopped."""

    def __init__(self, server: DemoServer, *, serial: str,
                 on_event: Callable[[dict[str, Any]], None]):
        self._server = server
        self._serial = serial
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"events-{serial}", daemon=True)
        self.last_id = 0
        self.count = 0
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, drain_seconds: float = 3.0) -> None:
        """Let the last events arrive (they are posted before the unit reboots), then end."""
        time.sleep(drain_seconds)
        self._stop.set()
        self._thread.join(timeout=_STREAM_READ_SECONDS + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._server.stream(self._serial, after=self.last_id,
                                                 stop=self._stop):
                    self.last_id = max(self.last_id, int(event["id"]))
                    self.count += 1
                    self._on_event(event)
            except (requests.RequestException, ValueError) as e:
                self.error = f"{type(e).__name__}: {e}"
            self._stop.wait(1.0)
