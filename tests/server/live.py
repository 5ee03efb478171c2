"""A real `kiln server` process for tests that need one: the browser, the fuzzer, SIGKILL.

    with LiveServer.start(data_dir=tmp_path / "srv") as server:
        requests.get(server.url + "/healthz")

Tests using it need `@pytest.mark.allow_commands("python")` (the server runs as
`python -m kiln.cli server …`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import requests
from urllib3.exceptions import InsecureRequestWarning


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class LiveServer:
    data_dir: Path
    database_url: str = ""
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if "--tls-cert" in self.extra_args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "kiln.cli", "server", "--data-dir", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}", *self.extra_args]
        if self.database_url:
            argv += ["--database-url", self.database_url]
        return argv

    def admin(self, username: str = "admin") -> tuple[str, str]:
        """`kiln server create-admin`: (one-time password, API token)."""
        argv = [sys.executable, "-m", "kiln.cli", "server", "--data-dir", str(self.data_dir)]
        if self.database_url:
            argv += ["--database-url", self.database_url]
        output = subprocess.run([*argv, "create-admin", username], check=True,
                                capture_output=True, text=True).stdout
        values = [line.rsplit(": ", 1)[1] for line in output.splitlines() if ": " in line]
        return values[1], values[2]

    def trust(self, public_key: Path) -> None:
        """Make uploads signed by `public_key`'s private half acceptable (before `run`)."""
        keys = self.data_dir / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        shutil.copy(public_key, keys / public_key.name)

    def push_image(self, token: str, image: Path) -> str:
        """Upload a signed image (or find it there already); return its id."""
        answer = requests.post(f"{self.url}/api/v1/images", data=image.read_bytes(),
                               headers={"Authorization": f"Bearer {token}"}, timeout=60)
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"pushing {image} answered {answer.status_code}: {answer.text}")
        image_id: str = answer.json()["id"]
        return image_id

    def put_file(self, token: str, name: str, data: bytes) -> None:
        """Store a boot file (`/api/v1/files/NAME`)."""
        answer = requests.put(f"{self.url}/api/v1/files/{name}", data=data,
                              headers={"Authorization": f"Bearer {token}"}, timeout=60)
        if not answer.ok:
            raise RuntimeError(f"storing {name} answered {answer.status_code}: {answer.text}")

    def run(self, *, timeout: float = 60) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv(), stdout=log, stderr=log,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kiln server exited {self.process.returncode}:\n"
                                   + self.log_path.read_text()[-4000:])
            try:
                with warnings.catch_warnings():  # not verified on purpose: only "is it up?"
                    warnings.simplefilter("ignore", InsecureRequestWarning)
                    if requests.get(self.url + "/healthz", timeout=2, verify=False).ok:  # noqa: S501
                        return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("kiln server did not answer /healthz:\n"
                           + self.log_path.read_text()[-4000:])

    @classmethod
    def start(cls, *, data_dir: Path, database_url: str = "",
              extra_args: tuple[str, ...] = ()) -> LiveServer:
        server = cls(data_dir=data_dir, database_url=database_url, extra_args=extra_args)
        server.run()
        return server

    def kill(self) -> None:
        """SIGKILL the server and its workers: no shutdown handler runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
