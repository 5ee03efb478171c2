"""What `bench/ddi_poll.py` measures with: gooseBit in its own venv, Kiln's DDI set-up through
the operator API, the warm-up that registers every device, and `wrk` with `ddi_poll.lua`.
See bench/README.md."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from bench.server_setup import REPO, CpuSample, cpu_used, log

WORK = REPO / "bench" / "work" / "ddi"
LUA = REPO / "bench" / "ddi_poll.lua"
GOOSEBIT_VERSION = "0.2.12"
GOOSEBIT_VENV = WORK / f"goosebit-{GOOSEBIT_VERSION}-venv"
# What a SWUpdate device sends when the server asks for its attributes (configData).
CONFIG_DATA = {"data": {"hw_boardname": "bench-board", "hw_revision": "1",
                        "sw_version": "1.0.0"}, "mode": "merge"}


def run(argv: Sequence[str | Path], *, env: dict[str, str] | None = None,
        timeout: float = 600, any_status: bool = False,
        interrupt_when: Callable[[], bool] | None = None) -> str:
    """Run a command to its end (argv list, no shell); its stdout (and stderr with
    `any_status`), or exit with its output when it fails. With `interrupt_when`, the command
    gets SIGINT as soon as that says so."""
    with subprocess.Popen([str(part) for part in argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as process:
        deadline = time.monotonic() + timeout
        while interrupt_when is not None and process.poll() is None \
                and time.monotonic() < deadline:
            if interrupt_when():
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        try:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise SystemExit(f"{' '.join(map(str, argv))}: no end within {timeout:.0f} s") \
                from None
    if any_status:
        return stdout + stderr
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({process.returncode}):\n"
                         f"{stdout[-2000:]}{stderr[-3000:]}")
    return stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within 60 s")


# --- gooseBit ---------------------------------------------------------------------------------

def goosebit_venv() -> Path:
    """gooseBit's own venv (it pins its own FastAPI and Tortoise): made once, then reused."""
    python = GOOSEBIT_VENV / "bin" / "python"
    marker = GOOSEBIT_VENV / "installed"
    if not marker.exists():
        log(f"gooseBit: making {GOOSEBIT_VENV} (pip install goosebit=={GOOSEBIT_VERSION})")
        # The interpreter Kiln's venv runs on, so both servers run on the same Python.
        run([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", "--clear", GOOSEBIT_VENV])
        run([python, "-m", "pip", "install", "--quiet", f"goosebit=={GOOSEBIT_VERSION}"])
        marker.write_text(GOOSEBIT_VERSION + "\n")
    return python


def venv_versions(python: Path, names: Sequence[str]) -> str:
    script = ("import importlib.metadata as m, sys; print(', '.join(n + ' ' + m.version(n) "
              "for n in sys.argv[1:]))")
    return run([python, "-c", script, *names]).strip()


@dataclass
class GooseBit:
    """gooseBit as its Docker image runs it: migrated with aerich, then one uvicorn worker
    (asyncio loop and h11, as `pip install goosebit` brings), no access log."""

    directory: Path
    python: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "goosebit.log"

    def environment(self) -> dict[str, str]:
        return {**os.environ, "GOOSEBIT_SETTINGS": str(self.directory / "goosebit.yaml")}

    def prepare(self) -> None:
        """Settings file (SQLite in the directory, tenant `default`, device auth off: its
        default) and the schema by its own migrations."""
        self.directory.mkdir(parents=True)
        self.port = free_port()
        (self.directory / "goosebit.yaml").write_text(
            f"port: {self.port}\ntenant: default\n"
            f"db_uri: sqlite:///{self.directory / 'db.sqlite3'}\n"
            f"artifacts_dir: {self.directory / 'artifacts'}\n")
        site = run([self.python, "-c", "import goosebit, os; "
                    "print(os.path.dirname(goosebit.__file__))"], env=self.environment())
        (self.directory / "aerich.toml").write_text(
            '[tool.aerich]\ntortoise_orm = "goosebit.db.config.TORTOISE_CONF"\n'
            f'location = "{site.strip()}/db/migrations"\n')
        run([self.python.parent / "aerich", "--config", self.directory / "aerich.toml",
             "upgrade"], env=self.environment())

    def start(self) -> None:
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                [str(self.python.parent / "uvicorn"), "goosebit:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1", "--no-access-log"],
                stdout=output, stderr=output, start_new_session=True, cwd=self.directory,
                env=self.environment())
        wait_ready(self.url + "/login", self.process, self.log_path)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


# --- Kiln's DDI through the operator API --------------------------------------------------------

@dataclass(frozen=True)
class KilnDdi:
    url: str
    admin_token: str
    tenant: str = "default"

    def call(self, method: str, path: str, body: object) -> requests.Response:
        answer = requests.request(method, f"{self.url}/api/v1/tenants/{self.tenant}{path}",
                                  json=body, timeout=300,
                                  headers={"Authorization": f"Bearer {self.admin_token}"})
        if answer.status_code not in (200, 201, 204):
            raise SystemExit(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer

    def configure(self, polling_seconds: int) -> str:
        """Sets the tenant's polling interval; the gateway token."""
        self.call("PUT", "/ddi", {"polling_seconds": polling_seconds})
        return str(self.call("POST", "/ddi/gateway-token", None).json()["gateway_token"])

    def register(self, controller_ids: list[str]) -> dict[str, str]:
        """Creates the targets, 10,000 a request; their target tokens by controller id."""
        tokens: dict[str, str] = {}
        for start in range(0, len(controller_ids), 10_000):
            batch = [{"controller_id": name} for name in controller_ids[start:start + 10_000]]
            for target in self.call("POST", "/targets", {"targets": batch}).json()["targets"]:
                tokens[target["controller_id"]] = target["target_token"]
        return tokens


# --- devices -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    path: str  # the root poll, e.g. /default/controller/v1/dev-000001
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WarmedUp:
    etags: list[str | None]
    seconds: float
    requests: int
    config_data: int  # devices the server asked for configData (and got it)


def warm_up(base_url: str, devices: list[Device], *, want_etag: bool,
            threads: int = 12) -> WarmedUp:
    """Every device polls once and sends configData when the answer asks for it, as SWUpdate
    does when it registers; with `want_etag` it then polls again and keeps the ETag."""
    local = threading.local()
    counts = {"requests": 0, "config_data": 0}
    lock = threading.Lock()

    def one(device: Device) -> str | None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        sent = 1
        answer = session.get(base_url + device.path, headers=device.headers, timeout=60)
        if answer.status_code != 200:
            raise SystemExit(f"warm-up GET {device.path}: {answer.status_code} "
                             f"{answer.text[:300]}")
        link = answer.json().get("_links", {}).get("configData")
        if link is not None:
            put = session.put(urljoin(base_url + device.path, link["href"]), json=CONFIG_DATA,
                              headers=device.headers, timeout=60)
            sent += 1
            if put.status_code not in (200, 204):
                raise SystemExit(f"warm-up PUT configData {device.path}: {put.status_code} "
                                 f"{put.text[:300]}")
        etag = None
        if want_etag:
            answer = session.get(base_url + device.path, headers=device.headers, timeout=60)
            sent += 1
            etag = answer.headers.get("ETag")
        with lock:
            counts["requests"] += sent
            counts["config_data"] += link is not None
        return etag

    started = time.perf_counter()
    # The first device alone: gooseBit creates its `default` hardware row (and the configData's
    # one) with a get_or_create that races, and concurrent first polls on a fresh database
    # leave duplicate rows that fail every later registration (MultipleObjectsReturned).
    etags = [one(device) for device in devices[:1]]
    with ThreadPoolExecutor(threads) as pool:
        etags += pool.map(one, devices[1:])
    return WarmedUp(etags, time.perf_counter() - started, counts["requests"],
                    counts["config_data"])


def fetch_etags(base_url: str, devices: list[Device], *, threads: int = 8) -> list[str | None]:
    """Every device's poll once more, for the ETag its answer carries."""
    local = threading.local()

    def one(device: Device) -> str | None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        answer = session.get(base_url + device.path, headers=device.headers, timeout=60)
        if answer.status_code != 200:
            raise SystemExit(f"GET {device.path}: {answer.status_code} {answer.text[:300]}")
        return answer.headers.get("ETag")

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, devices))


def write_requests(path: Path, devices: list[Device],
                   extra: Callable[[int], dict[str, str]] | None = None) -> Path:
    """The file `ddi_poll.lua` reads: path, then `Name: value` headers, tab-separated."""
    lines = []
    for index, device in enumerate(devices):
        headers = device.headers | (extra(index) if extra else {})
        lines.append("\t".join([device.path, *(f"{k}: {v}" for k, v in headers.items())]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_registration(path: Path, devices: list[Device]) -> Path:
    """Every device's poll, then every device's configData (PUT), for `send_once`."""
    body = "=" + json.dumps(CONFIG_DATA)
    lines = ["\t".join([device.path, *(f"{k}: {v}" for k, v in device.headers.items())])
             for device in devices]
    lines += ["\t".join([device.path + "/configData", "Content-Type: application/json",
                         *(f"{k}: {v}" for k, v in device.headers.items()), body])
              for device in devices]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the load: wrk ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    statuses: dict[str, int]
    socket_errors: int  # connect, read, write errors and timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu: float
    database_cpu: float
    wrk_cpu: float
    machine_busy: float
    machine_total: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def unexpected(self) -> int:
        return self.requests - self.statuses.get("200", 0) - self.statuses.get("304", 0)


def wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    return found


def wrk_version() -> str:
    return run([wrk(), "--version"], any_status=True).split(" Copyright")[0].strip()


def wrk_argv(url: str, requests_file: Path, *, threads: int, connections: int,
             seconds: int, once: Path | None = None) -> list[str]:
    argv = [wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "10s", "-s", str(LUA), url, "--", str(requests_file), str(threads)]
    return argv + (["once", str(once)] if once is not None else [])


def result(output: str) -> dict[str, Any]:
    line = next((line for line in output.splitlines() if line.startswith("ddi-poll-result ")),
                None)
    if line is None:
        raise SystemExit(f"wrk printed no result:\n{output}")
    found: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    return found


def send_once(url: str, requests_file: Path, *, threads: int, connections: int,
              limit: int = 900) -> tuple[dict[str, int], float]:
    """Every request of the file once (wrk, `once` mode): the statuses and the seconds."""
    marker = requests_file.with_suffix(".done-")
    for old in marker.parent.glob(marker.name + "*"):
        old.unlink()
    started = time.perf_counter()
    output = run(wrk_argv(url, requests_file, threads=threads, connections=connections,
                          seconds=limit, once=marker), timeout=limit + 60,
                 interrupt_when=lambda: len(list(marker.parent.glob(marker.name + "*")))
                 >= threads)
    return result(output)["statuses"], time.perf_counter() - started


def load(url: str, requests_file: Path, *, server_group: int, threads: int,
         connections: int, seconds: int) -> Load:
    """One wrk run against `url`; the CPU the server's process group, PostgreSQL and wrk used
    meanwhile."""
    argv = wrk_argv(url, requests_file, threads=threads, connections=connections,
                    seconds=seconds)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = CpuSample.take(server_group)
    output = run(argv, timeout=seconds + 120)
    after = CpuSample.take(server_group)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = result(output)
    return Load(
        requests=found["requests"], seconds=found["duration_us"] / 1e6,
        statuses=found["statuses"],
        socket_errors=sum(found[key] for key in ("connect_errors", "read_errors",
                                                 "write_errors", "timeouts")),
        p50_ms=found["p50_us"] / 1000, p90_ms=found["p90_us"] / 1000,
        p99_ms=found["p99_us"] / 1000, max_ms=found["max_us"] / 1000,
        server_cpu=cpu_used(before.server, after.server),
        database_cpu=cpu_used(before.database, after.database),
        wrk_cpu=(ended.ru_utime + ended.ru_stime) - (children.ru_utime + children.ru_stime),
        machine_busy=after.machine[0] - before.machine[0],
        machine_total=after.machine[1] - before.machine[1])


def poll_answers(url: str) -> tuple[float, float]:
    """The server's `kiln_ddi_polls` so far: (answered from the cache, from the database)."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    found = {"cache": 0.0, "database": 0.0}
    for line in text.splitlines():
        if line.startswith("kiln_ddi_polls_total{"):
            labels, _, value = line.rpartition(" ")
            for answer in found:
                if f'answer="{answer}"' in labels:
                    found[answer] += float(value)
    return found["cache"], found["database"]
