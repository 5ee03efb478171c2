"""What `bench/server.py` measures with: a `kiln server` process, the CPU every process
used, generated units (bulk-loaded) and generated event runs, a throw-away PostgreSQL
database. See bench/README.md."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from server.db.schema import units

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"edge-100": 45, "edge-200": 30, "edge-300": 15, "core-900": 10}
STATES = {("manufacture", "succeeded"): 80, ("manufacture", "failed"): 6,
          ("manufacture", "started"): 2, ("restore", "succeeded"): 8,
          ("restore", "failed"): 1, ("erase", "succeeded"): 3}
DAY_NS = 86_400 * 10**9


def log(line: str = "") -> None:
    print(line, flush=True)


# --- CPU accounting (the clients, the server and the database share the machine) ----------

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name_end = raw.rindex(")")
    return [raw[raw.index("(") + 1:name_end], *raw[name_end + 2:].split()]


def process_cpu(select_pid: Callable[[list[str]], bool]) -> dict[int, float]:
    """CPU seconds of every live process `select_pid(fields)` picks, by pid."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None \
                and select_pid(fields):
            found[int(entry.name)] = (int(fields[12]) + int(fields[13])) / TICK
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    total = sum(values[:8]) / TICK
    return total - (values[3] + values[4]) / TICK, total


@dataclass(frozen=True)
class CpuSample:
    server: dict[int, float]
    database: dict[int, float]
    machine: tuple[float, float]

    @classmethod
    def take(cls, server_group: int) -> CpuSample:
        return cls(server=process_cpu(lambda fields: int(fields[3]) == server_group),
                   database=process_cpu(lambda fields: fields[0] == "postgres"),
                   machine=machine_busy())


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


# --- the server ------------------------------------------------------------------------------

@dataclass
class Server:
    data_dir: Path
    database_url: str
    workers: int
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def kiln(self, *arguments: str) -> list[str]:
        argv = [sys.executable, "-m", "kiln.cli", "server", "--data-dir", str(self.data_dir)]
        return argv + (["--database-url", self.database_url] if self.database_url else []) \
            + list(arguments)

    def create_admin(self) -> str:
        output = subprocess.run(self.kiln("create-admin", "bench"), check=True, cwd=REPO,
                                capture_output=True, text=True).stdout
        return next(line.rsplit(": ", 1)[1] for line in output.splitlines()
                    if line.startswith("API token"))

    def start(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                self.kiln("--listen", f"127.0.0.1:{self.port}", "--workers", str(self.workers)),
                stdout=output, stderr=output, start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"kiln server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise SystemExit("kiln server did not answer /healthz within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)

    def request_times(self, offset: int, route: str) -> list[float]:
        """The `ms` of the server's log lines for `route` after byte `offset`."""
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode(errors="replace").splitlines()
        found = []
        for line in lines:
            if f'"route": "{route}"' in line:
                found.append(float(json.loads(line)["ms"]))
        return found


# --- bulk-loaded units -----------------------------------------------------------------------

@dataclass(frozen=True)
class Loaded:
    serials: list[str]
    macs: list[str]
    now_ns: int


def unit_rows(count: int, generator: random.Random, now_ns: int) -> Iterator[dict[str, Any]]:
    states, weights = list(STATES), list(STATES.values())
    variants, variant_weights = list(VARIANTS), list(VARIANTS.values())
    for number in range(count):
        lifecycle, status = generator.choices(states, weights)[0]
        created = now_ns - generator.randrange(365 * DAY_NS)
        updated = created + generator.randrange(max(1, now_ns - created))
        week = 1 + created // (7 * DAY_NS) % 52
        octets = number.to_bytes(3, "big")
        macs = " ".join(f"00:1b:21:{octets[0]:02x}:{octets[1]:02x}:{octets[2] + port & 255:02x}"
                        for port in range(2))
        failure = "manufacture/disks/validate: expected 2 disks of 480 GB, found 1" \
            if status == "failed" else None
        yield {
            "tenant": "default", "serial": f"AE{26:02d}{week:02d}{number:07d}",
            "profile": f"line{number % 3 + 1}",
            "variant": generator.choices(variants, variant_weights)[0],
            "dmi": json.dumps({"sys_vendor": "Acme", "product_name": "Edge",
                               "product_serial": f"AE{number:07d}", "board_name": "E100"}),
            "macs": macs, "hardware": json.dumps({
                "cpu": "Intel(R) Atom(TM) C3758", "memory_bytes": 16 * 1024**3,
                "disks": [{"model": "Micron 5300", "size": 480_103_981_056}] * 2}),
            "lifecycle": lifecycle, "status": status, "failure": failure,
            "created_ns": created, "updated_ns": updated,
            "manufactured_ns": updated if lifecycle != "manufacture" or
            status == "succeeded" else None,
        }


def load_units(engine: Engine, count: int) -> Loaded:
    generator = random.Random(20261122)  # noqa: S311 - repeatable test data
    now_ns = time.time_ns()
    rows = list(unit_rows(count, generator, now_ns))
    started = time.perf_counter()
    with engine.begin() as connection:
        for start in range(0, count, 10_000):
            connection.execute(units.insert(), rows[start:start + 10_000])
    if engine.dialect.name == "postgresql":  # autovacuum would soon; do not wait for it
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE units"))
    log(f"load: {count:,} units in {time.perf_counter() - started:.1f} s (bulk-inserted "
        "directly with SQLAlchemy into the server's database, not through the API)")
    picks = generator.sample(rows, 10)
    return Loaded([row["serial"] for row in picks],
                  [row["macs"].split()[0] for row in picks], now_ns)

def run_events(serial: str, count: int) -> list[dict[str, Any]]:
    """One unit's manufacture run: start, stages with progress and log lines, finish."""
    run_id = uuid.uuid4().hex
    now = time.time_ns()
    found: list[dict[str, Any]] = []

    def add(kind: str, name: str, **fields: Any) -> None:
        found.append({"serial": serial, "run_id": run_id, "seq": len(found),
                      "timestamp_ns": now + len(found) * 1000, "type": kind, "name": name,
                      "message": fields.pop("message", ""), **fields})

    add("start", "manufacture")
    while len(found) < count - 1:
        stage = f"manufacture/stage{len(found) // 50}"
        position = len(found) % 50
        if position == 1:
            add("start", stage)
        elif position == 49:
            add("finish", stage, result="success")
        elif position % 3:
            add("progress", stage, done=position, total=50)
        else:
            add("log", stage, message=f"writing block {position} of the image",
                level="info")
    add("finish", "manufacture", result="success")
    return found

@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    url = make_url(admin_url)
    name = f"kiln_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
