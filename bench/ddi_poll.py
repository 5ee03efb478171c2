"""Benchmark DDI root polls: gooseBit 0.2.12 against Kiln's hawkBit DDI, same load generator.

Every device is registered first (gooseBit: its first poll and the configData it asks for,
as SWUpdate does; Kiln: `POST /api/v1/tenants/default/targets`, then the same warm-up
polls), then `wrk` (`bench/ddi_poll.lua`) polls the devices in turn over `--connections`
keep-alive connections for `--duration` seconds. Printed per run: polls/s, latency p50/p90/p99,
statuses, and the CPU the server (and PostgreSQL, and wrk) used per 1000 polls. Goals: Kiln
at least 10x gooseBit's polls/s, and p99 at most 50 ms.

    .venv/bin/python bench/ddi_poll.py [--devices 10000] [--scale-devices 100000]

gooseBit runs from its own venv in bench/work/ddi/ (made on the first run with pip).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sqlalchemy import create_engine, text

# As in bench/server.py: the repository first, so `server` is the package, not a bench file.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ddi_setup import (
    GOOSEBIT_VERSION,
    WORK,
    Device,
    GooseBit,
    KilnDdi,
    Load,
    fetch_etags,
    goosebit_venv,
    load,
    poll_answers,
    run,
    send_once,
    venv_versions,
    warm_up,
    write_registration,
    write_requests,
    wrk_argv,
    wrk_version,
)
from bench.server_setup import REPO, Server, log, postgres_database

P99_GOAL_MS = 50.0
RATIO_GOAL = 10.0
TENANT = "default"


@dataclass(frozen=True)
class Run:
    label: str
    devices: int
    outcome: Load


@dataclass(frozen=True)
class Settings:
    connections: int
    threads: int
    duration: int
    warmup: int
    auth: str  # "target" or "gateway"
    polling_seconds: int


def controller_ids(count: int) -> list[str]:
    width = max(5, len(str(count)))
    return [f"dev-{number:0{width}d}" for number in range(1, count + 1)]


def report(label: str, devices: int, outcome: Load) -> Run:
    statuses = ", ".join(f"{status}: {count:,}" for status, count in
                         sorted(outcome.statuses.items()))
    per_1000 = 1000 / max(outcome.requests, 1)
    other = outcome.machine_busy - outcome.server_cpu - outcome.database_cpu - outcome.wrk_cpu
    log(f"  {label}: {outcome.rate:,.0f} polls/s ({outcome.requests:,} in "
        f"{outcome.seconds:.1f} s, each device every {devices / max(outcome.rate, 1e-9):.1f} s"
        f"); latency p50 {outcome.p50_ms:.1f} ms, p90 "
        f"{outcome.p90_ms:.1f} ms, p99 {outcome.p99_ms:.1f} ms, max {outcome.max_ms:.1f} ms")
    log(f"    statuses {statuses or 'none'}; other than 200/304: {outcome.unexpected:,}; "
        f"socket errors and timeouts: {outcome.socket_errors:,}")
    log(f"    CPU: server {outcome.server_cpu:.1f} s = {outcome.server_cpu * per_1000:.2f} s "
        f"per 1000 polls; PostgreSQL {outcome.database_cpu:.1f} s "
        f"({outcome.database_cpu * per_1000:.2f} s per 1000); wrk {outcome.wrk_cpu:.1f} s; "
        f"the rest (kernel, other programs) {other:.1f} s; machine busy "
        f"{outcome.machine_busy / max(outcome.machine_total, 1e-9):.0%} of "
        f"{outcome.machine_total:.0f} CPU-s")
    return Run(label, devices, outcome)


def measure(url: str, requests_file: Path, *, server_group: int, settings: Settings,
            label: str, devices: int, warm: bool = True) -> Run:
    """An unmeasured `--warmup` run (when `warm`), then the measured one."""
    if warm and settings.warmup > 0:
        load(url, requests_file, server_group=server_group, threads=settings.threads,
             connections=settings.connections, seconds=settings.warmup)
    outcome = load(url, requests_file, server_group=server_group, threads=settings.threads,
                   connections=settings.connections, seconds=settings.duration)
    return report(label, devices, outcome)


# --- gooseBit -----------------------------------------------------------------------------------

def bench_goosebit(count: int, settings: Settings) -> Run:
    log(f"\n== gooseBit {GOOSEBIT_VERSION}, SQLite, 1 uvicorn worker, {count:,} devices ==")
    python = goosebit_venv()
    directory = WORK / "goosebit"
    shutil.rmtree(directory, ignore_errors=True)
    server = GooseBit(directory=directory, python=python)
    server.prepare()
    server.start()
    try:
        devices = [Device(f"/{TENANT}/controller/v1/{name}") for name in controller_ids(count)]
        warmed = warm_up(server.url, devices, want_etag=False)
        with sqlite3.connect(directory / "db.sqlite3") as database:
            states = dict(database.execute(
                "SELECT last_state, count(*) FROM device GROUP BY last_state").fetchall())
        log(f"registration: {count:,} devices by their first poll + configData in "
            f"{warmed.seconds:.1f} s ({warmed.requests:,} requests, "
            f"{warmed.requests / warmed.seconds:,.0f}/s); devices by state: "
            f"{', '.join(f'{state} {n:,}' for state, n in sorted(states.items()))} "
            "(2 = registered)")
        log("device auth: none (gooseBit's default, device_auth.enable false): no header sent")
        requests_file = write_requests(directory / "requests.txt", devices)
        assert server.process is not None
        return measure(server.url, requests_file, server_group=server.process.pid,
                       settings=settings, label="gooseBit", devices=count)
    finally:
        server.stop()


# --- Kiln ---------------------------------------------------------------------------------------

def kiln_devices(names: list[str], tokens: dict[str, str], gateway: str,
                 auth: str) -> list[Device]:
    return [Device(f"/{TENANT}/controller/v1/{name}",
                   {"Authorization": f"TargetToken {tokens[name]}" if auth == "target"
                    else f"GatewayToken {gateway}"}) for name in names]


@dataclass
class KilnServer(Server):
    """`kiln server` with extra server options (before any subcommand)."""

    extra: tuple[str, ...] = ()

    def kiln(self, *arguments: str) -> list[str]:
        return super().kiln(*self.extra, *arguments)


def bench_kiln(name: str, database_url: str, *, count: int, workers: int,
               settings: Settings, etag_run: bool, cache_off_run: bool) -> list[Run]:
    """Registers `count` targets, warms them up, then the runs: polls (the server's defaults),
    with `etag_run` polls with If-None-Match, with `cache_off_run` polls after a restart with
    `--ddi-cache-seconds 0` (every poll reads the database)."""
    label = f"Kiln {name}"
    log(f"\n== {label}, {workers} worker{'s' if workers > 1 else ''}, {count:,} devices ==")
    data_dir = WORK / f"kiln-{name.lower()}-{count}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    server = KilnServer(data_dir=data_dir, database_url=database_url, workers=workers)
    token = server.create_admin()
    server.start()
    try:
        ddi = KilnDdi(server.url, token, TENANT)
        gateway = ddi.configure(settings.polling_seconds)
        names = controller_ids(count)
        started = time.perf_counter()
        tokens = ddi.register(names)
        log(f"registration: {count:,} targets through POST /api/v1/tenants/{TENANT}/targets "
            f"(10,000 a request) in {time.perf_counter() - started:.1f} s")
        devices = kiln_devices(names, tokens, gateway, settings.auth)
        statuses, seconds = send_once(
            server.url, write_registration(data_dir / "registration.txt", devices),
            threads=settings.threads, connections=settings.connections)
        log(f"warm-up (wrk, each request once): every device's poll, then its configData: "
            f"{sum(statuses.values()):,} requests in {seconds:.1f} s; statuses "
            + ", ".join(f"{status}: {n:,}" for status, n in sorted(statuses.items())))
        if set(statuses) - {"200", "204"}:
            raise SystemExit("warm-up: the server refused some requests (see its log, "
                             f"{server.log_path})")
        etags: list[str | None] = []
        if etag_run:
            started = time.perf_counter()
            etags = fetch_etags(server.url, devices)
            log(f"ETags: every device polled once more (Python) in "
                f"{time.perf_counter() - started:.1f} s; {sum(e is not None for e in etags):,} "
                "answers carried one")
        scheme = "TargetToken (per device)" if settings.auth == "target" \
            else "GatewayToken (one for all devices)"
        log(f"device auth: {scheme} in the Authorization header; server defaults (a worker "
            "keeps a device's answer until something about the device changes, at most "
            "--ddi-cache-seconds 600)")
        requests_file = write_requests(data_dir / "requests.txt", devices)
        warm_every_worker(server.url, requests_file, settings=settings)

        def measured(label: str, file: Path, *, warm: bool = True) -> Run:
            return measured_run(server, file, settings=settings, label=label, devices=count,
                                warm=warm)

        runs = [measured(label, requests_file)]
        if etag_run:
            etag_file = write_requests(
                data_dir / "requests-etag.txt", devices,
                lambda index: {"If-None-Match": etag} if (etag := etags[index]) else {})
            runs.append(measured(f"{label}, ETag/304", etag_file, warm=False))
        if cache_off_run:
            server.stop()
            server.extra = ("--ddi-cache-seconds", "0")
            server.start()
            log("restarted with --ddi-cache-seconds 0: no answer reused, every poll reads "
                "the database")
            runs.append(measured(f"{label}, no poll cache", requests_file))
        return runs
    finally:
        server.stop()


def measured_run(server: KilnServer, requests_file: Path, *, settings: Settings, label: str,
                 devices: int, warm: bool) -> Run:
    """`measure`, and how many answers came from a worker's cache (`kiln_ddi_polls`)."""
    assert server.process is not None
    before = poll_answers(server.url)
    found = measure(server.url, requests_file, server_group=server.process.pid,
                    settings=settings, label=label, devices=devices, warm=warm)
    after = poll_answers(server.url)
    cached, read = after[0] - before[0], after[1] - before[1]
    if cached + read:
        log(f"    answers: {cached / (cached + read):.1%} from a worker's cache, "
            f"{read:,.0f} read the database")
    return found


def warm_every_worker(url: str, requests_file: Path, *, settings: Settings,
                      passes: int = 12) -> None:
    """Poll every device again (unmeasured) until a pass reads the database for under 1 % of
    its polls: the registration's configData dropped each device's answer, and with several
    workers each keeps its own. That is a fleet's steady state: between changes, every
    worker has every device's answer."""
    for number in range(1, passes + 1):
        before = poll_answers(url)
        send_once(url, requests_file, threads=settings.threads,
                  connections=settings.connections)
        after = poll_answers(url)
        cached, read = after[0] - before[0], after[1] - before[1]
        share = read / max(cached + read, 1)
        log(f"warm-up pass {number}: {share:.1%} of the polls read the database")
        if share < 0.01:
            return


def postgres_admin_url(given: str) -> str:
    return given or run([REPO / "tools" / "postgres"]).strip()


def bench_postgres(arguments: argparse.Namespace, settings: Settings) -> list[Run]:
    with postgres_database(postgres_admin_url(arguments.postgres_url)) as url:
        engine = create_engine(url)
        with engine.connect() as connection:
            log(f"\nPostgreSQL {connection.execute(text('SHOW server_version')).scalar()}")
        engine.dispose()
        return bench_kiln("PostgreSQL", url, count=arguments.devices,
                          workers=arguments.pg_workers, settings=settings, etag_run=True,
                          cache_off_run=True)


# --- output -------------------------------------------------------------------------------------

def versions(arguments: argparse.Namespace) -> None:
    log(f"DDI poll benchmark: {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{wrk_version()}")
    kiln_stack = ["fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy",
                  "psycopg"]
    log("Kiln's venv: " + ", ".join(f"{name} {metadata.version(name)}" for name in kiln_stack))
    if not arguments.skip_goosebit:
        log("gooseBit's venv: " + venv_versions(goosebit_venv(), [
            "goosebit", "fastapi", "starlette", "uvicorn", "tortoise-orm", "aiosqlite"]))


def summary(runs: list[Run], scale_base: Run | None) -> None:
    log("\n| run | devices | polls/s | p50 ms | p99 ms | server CPU s / 1000 polls | "
        "other than 200/304 | socket errors |")
    log("|---|---|---|---|---|---|---|---|")
    for item in runs:
        outcome = item.outcome
        log(f"| {item.label} | {item.devices:,} | {outcome.rate:,.0f} | {outcome.p50_ms:.1f} | "
            f"{outcome.p99_ms:.1f} | {outcome.server_cpu * 1000 / max(outcome.requests, 1):.2f}"
            f" | {outcome.unexpected:,} | {outcome.socket_errors:,} |")
    for item in runs:
        if item.label.startswith("Kiln"):
            verdict = "met" if item.outcome.p99_ms <= P99_GOAL_MS else "MISSED"
            log(f"p99 {item.label}, {item.devices:,} devices: {item.outcome.p99_ms:.1f} ms "
                f"(goal ≤ {P99_GOAL_MS:.0f} ms: {verdict})")
    if scale_base is not None:
        for big in runs:
            small = next((item for item in runs if item.label == big.label
                          and item.devices == scale_base.devices), None)
            if big.devices > scale_base.devices and small is not None:
                log(f"scale: {big.label} at {big.devices:,} devices {big.outcome.rate:,.0f} "
                    f"polls/s against {small.outcome.rate:,.0f} at {small.devices:,}: ratio "
                    f"{big.outcome.rate / small.outcome.rate:.2f}")
    goose = next((item for item in runs if item.label == "gooseBit"), None)
    if goose is not None:
        for item in runs:
            if item.label.startswith("Kiln") and item.devices == goose.devices:
                ratio = item.outcome.rate / goose.outcome.rate
                log(f"ratio {item.label}/gooseBit polls/s ({item.devices:,} devices): "
                    f"{ratio:.1f} (goal ≥ {RATIO_GOAL:.0f}: "
                    f"{'met' if ratio >= RATIO_GOAL else 'MISSED'})")
        kiln = next((item for item in runs if item.label == "Kiln SQLite"
                     and item.devices == goose.devices), None)
        if kiln is not None:
            log(f"ratio Kiln/gooseBit polls/s (SQLite, {goose.devices:,} devices, same wrk): "
                f"{kiln.outcome.rate / goose.outcome.rate:.1f}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000, help="registered devices")
    parser.add_argument("--connections", type=int, default=64, help="concurrent pollers")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--duration", type=int, default=20, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3,
                        help="seconds of unmeasured load before each server's first run")
    parser.add_argument("--scale-devices", type=int, default=100_000,
                        help="Kiln (SQLite) again with this many devices; 0 skips it")
    parser.add_argument("--auth", choices=["target", "gateway"], default="target",
                        help="Kiln's device auth: TargetToken per device or one GatewayToken")
    parser.add_argument("--polling-seconds", type=int, default=300,
                        help="the tenant's polling interval set in Kiln")
    parser.add_argument("--pg-workers", type=int, default=2,
                        help="kiln server --workers on PostgreSQL")
    parser.add_argument("--postgres-url", default=os.environ.get("KILN_TEST_POSTGRES_URL", ""),
                        help="a PostgreSQL URL whose role may create databases (default: "
                             "$KILN_TEST_POSTGRES_URL, else what tools/postgres prints)")
    parser.add_argument("--skip-goosebit", action="store_true")
    parser.add_argument("--skip-kiln", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    return parser.parse_args()


def main() -> int:
    arguments = parse()
    settings = Settings(connections=arguments.connections, threads=arguments.threads,
                        duration=arguments.duration, warmup=arguments.warmup,
                        auth=arguments.auth, polling_seconds=arguments.polling_seconds)
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    versions(arguments)
    argv = wrk_argv("URL", Path("REQUESTS"), threads=settings.threads,
                    connections=settings.connections, seconds=settings.duration)
    log(f"load: {' '.join(argv)}")
    log(f"  each request the next device's GET /{TENANT}/controller/v1/ID (loopback only), "
        f"{arguments.devices:,} devices; {settings.warmup} s unmeasured load before each "
        "server's first run")
    runs: list[Run] = []
    if not arguments.skip_goosebit:
        runs.append(bench_goosebit(arguments.devices, settings))
    scale_base = None
    if not arguments.skip_kiln:
        sqlite_runs = bench_kiln("SQLite", "", count=arguments.devices, workers=1,
                                 settings=settings, etag_run=True, cache_off_run=True)
        scale_base = sqlite_runs[0]
        runs += sqlite_runs
        if not arguments.skip_postgres:
            runs += bench_postgres(arguments, settings)
        if arguments.scale_devices:
            runs += bench_kiln("SQLite", "", count=arguments.scale_devices, workers=1,
                               settings=settings, etag_run=False, cache_off_run=True)
    log(f"\nbenchmark time: {time.perf_counter() - started:.0f} s")
    summary(runs, scale_base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
