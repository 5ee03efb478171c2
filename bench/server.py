"""Benchmark a real `kiln server`: event ingestion over HTTP and unit search at 100,000 units,
each beside the same work done directly through SQLAlchemy on the same database.

- Ingestion: units report themselves (`POST /mfg/{profile}/units`), then client processes
  (`--clients`, one `requests.Session` each, bodies encoded before the clock starts) send
  every unit's run in batches of 100 events. Printed: events/s, batch latency p50/p99, and
  the CPU the clients, the server and the database used (they share the machine). Goal:
  at least 10,000 events/s. Baseline: the same rows inserted with `executemany`, one
  transaction per batch, from one thread.
- Search: 100,000 units are bulk-inserted straight into the server's database (a shortcut
  for the benchmark, not the API), then each query runs `--searches` times: HTTP round trip
  and the server's own time (its request log's `ms`), beside `search_units` (the same SQL)
  called directly. Goal: p95 under 100 ms.

    .venv/bin/python bench/server.py [--database sqlite|postgres|both] [--units 100000]

PostgreSQL: a fresh database made from `--postgres-url` (default $KILN_TEST_POSTGRES_URL,
else what `tools/postgres` prints) and dropped afterwards; the server runs `--workers 2`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, create_engine, select, text

# This file is bench/server.py: run as a script, its directory comes first on sys.path and
# the file would shadow the `server` package it measures. The repository goes first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server_setup import (
    DAY_NS,
    REPO,
    CpuSample,
    Loaded,
    Server,
    cpu_used,
    load_units,
    log,
    postgres_database,
    run_events,
)
from server.db.engine import insert_ignoring_duplicates, make_engine
from server.db.schema import events, units
from server.queries import UnitFilter, parse_cursor, search_units

WORK = REPO / "bench" / "work" / "server"
BATCH = 100
PROFILE = "bench"
SEARCH_GOAL_MS = 100.0
INGEST_GOAL = 10_000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass(frozen=True)
class ClientReport:
    latencies: list[float]
    started: float
    ended: float
    cpu: float
    errors: list[str]


@dataclass(frozen=True)
class ClientJob:
    url: str
    auth: tuple[str, str]
    serials: list[str]
    per_unit: int


def client(job: ClientJob, barrier: Any, results: Any) -> None:
    """One client process: encode its units' batches, wait for the start, send them all."""
    bodies = [[json.dumps({"events": run[i:i + BATCH]}).encode()
               for i in range(0, job.per_unit, BATCH)]
              for run in (run_events(serial, job.per_unit) for serial in job.serials)]
    session = requests.Session()
    session.auth = job.auth
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors: list[str] = []
    barrier.wait()
    cpu_before, started = time.process_time(), time.monotonic()
    for round_ in range(len(bodies[0]) if bodies else 0):
        for batches in bodies:
            sent = time.monotonic()
            answer = session.post(f"{job.url}/api/v1/events", data=batches[round_],
                                  headers=headers)
            latencies.append(time.monotonic() - sent)
            if answer.status_code != 200 or answer.json()["accepted"] != BATCH:
                errors.append(f"{answer.status_code} {answer.text[:200]}")
    ended = time.monotonic()
    results.put(ClientReport(latencies, started, ended, time.process_time() - cpu_before,
                             errors))


@dataclass(frozen=True)
class Ingested:
    events: int
    seconds: float
    p50_ms: float
    p99_ms: float
    client_cpu: float
    server_cpu: float
    database_cpu: float
    machine_busy: float  # CPU seconds the whole machine was busy
    machine_total: float  # CPU seconds all CPUs had

    @property
    def other_cpu(self) -> float:
        """Everything else: the kernel's share that no process is charged, other programs."""
        return self.machine_busy - self.client_cpu - self.server_cpu - self.database_cpu

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def ingest_http(server: Server, auth: tuple[str, str], serials: list[str], *,
                per_unit: int, clients: int) -> Ingested:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(clients + 1), context.Queue()
    processes = [context.Process(target=client, args=(
        ClientJob(server.url, auth, serials[index::clients], per_unit), barrier, results))
        for index in range(clients)]
    for process in processes:
        process.start()
    assert server.process is not None
    barrier.wait()
    before = CpuSample.take(server.process.pid)
    reports: list[ClientReport] = [results.get() for _ in processes]
    after = CpuSample.take(server.process.pid)
    for process in processes:
        process.join()
    errors = [error for report in reports for error in report.errors]
    if errors:
        raise SystemExit(f"{len(errors)} batches refused, e.g. {errors[0]}")
    latencies = [value for report in reports for value in report.latencies]
    return Ingested(
        events=len(latencies) * BATCH,
        seconds=max(r.ended for r in reports) - min(r.started for r in reports),
        p50_ms=percentile(latencies, 0.5) * 1000, p99_ms=percentile(latencies, 0.99) * 1000,
        client_cpu=sum(report.cpu for report in reports),
        server_cpu=cpu_used(before.server, after.server),
        database_cpu=cpu_used(before.database, after.database),
        machine_busy=after.machine[0] - before.machine[0],
        machine_total=after.machine[1] - before.machine[1])


def ingest_direct(engine: Engine, serials: list[str], per_unit: int) -> tuple[int, float]:
    """The same rows, `executemany` one batch per transaction, from one thread."""
    with engine.connect() as connection:
        ids = dict(connection.execute(select(units.c.serial, units.c.id)
                                      .where(units.c.serial.in_(serials))).all())
    runs = [run_events(serial, per_unit) for serial in serials]
    statement = insert_ignoring_duplicates(engine, events)
    started = time.perf_counter()
    for run in runs:
        for start in range(0, per_unit, BATCH):
            received = time.time_ns()
            rows = [event | {"unit_id": ids[event["serial"]], "received_ns": received,
                             "result": event.get("result"), "level": event.get("level"),
                             "done": event.get("done"), "total": event.get("total")}
                    for event in run[start:start + BATCH]]
            for row in rows:
                del row["serial"]
            with engine.begin() as connection:
                connection.execute(statement, rows)
    return len(runs) * per_unit, time.perf_counter() - started


# --- search ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Searched:
    label: str
    http_p50: float
    http_p95: float
    server_p50: float
    server_p95: float
    direct_p50: float
    direct_p95: float
    rows: int


def queries(loaded: Loaded, first_cursor: str | None) -> list[tuple[str, dict[str, str]]]:
    serial_part = loaded.serials[0][-6:]
    mac_part = loaded.macs[1][-8:]
    since = str(loaded.now_ns - 30 * DAY_NS)
    return [
        (f"q={serial_part} (part of a serial)", {"q": serial_part}),
        (f"q={mac_part} (part of a MAC)", {"q": mac_part}),
        ("status=failed&lifecycle=manufacture", {"status": "failed",
                                                 "lifecycle": "manufacture"}),
        ("variant=edge-200&since_ns=(30 days ago)", {"variant": "edge-200", "since_ns": since}),
        ("first page, no filter", {}),
        ("second page (cursor)", {"cursor": first_cursor or ""}),
    ]


def as_filter(params: dict[str, str]) -> UnitFilter:
    since = params.get("since_ns")
    return UnitFilter(text=params.get("q", ""), lifecycle=params.get("lifecycle"),
                      status=params.get("status"), variant=params.get("variant"),
                      since_ns=int(since) if since else None,
                      before=parse_cursor(params.get("cursor")))


def search(server: Server, engine: Engine, token: str, loaded: Loaded,
           repeat: int) -> list[Searched]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    first = session.get(f"{server.url}/api/v1/units").json()
    found = []
    for label, params in queries(loaded, first["next_cursor"]):
        offset = server.log_path.stat().st_size
        http: list[float] = []
        for _ in range(repeat):
            sent = time.perf_counter()
            answer = session.get(f"{server.url}/api/v1/units", params=params)
            http.append((time.perf_counter() - sent) * 1000)
            assert answer.status_code == 200, answer.text
        rows = len(answer.json()["units"])
        time.sleep(0.2)  # let the log lines reach the file
        on_server = server.request_times(offset, "/api/v1/units")
        direct: list[float] = []
        with engine.connect() as connection:
            for _ in range(repeat):
                sent = time.perf_counter()
                search_units(connection, as_filter(params))
                direct.append((time.perf_counter() - sent) * 1000)
        found.append(Searched(label, statistics.median(http), percentile(http, 0.95),
                              statistics.median(on_server), percentile(on_server, 0.95),
                              statistics.median(direct), percentile(direct, 0.95), rows))
    return found


# --- one database ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    name: str
    ingested: Ingested
    direct_rate: float
    searched: list[Searched]


def bench_one(name: str, database_url: str, arguments: argparse.Namespace) -> Outcome:
    workers = 1 if not database_url else 2
    log(f"\n== {name} ({workers} server worker{'s' if workers > 1 else ''}) ==")
    data_dir = WORK / name.lower()
    shutil.rmtree(WORK / name.lower(), ignore_errors=True)
    data_dir.mkdir(parents=True)
    server = Server(data_dir=data_dir, database_url=database_url, workers=workers)
    token = server.create_admin()  # also creates the schema
    engine = make_engine(database_url or f"sqlite:///{data_dir / 'kiln.db'}")
    try:
        loaded = load_units(engine, arguments.units)
        server.start()
        operator = {"Authorization": f"Bearer {token}"}
        manufdata = json.loads((REPO / "kiln" / "manufdata-example.json").read_text())
        manufdata.pop("server")
        answer = requests.put(f"{server.url}/api/v1/profiles/{PROFILE}", headers=operator,
                              json={"manufdata": manufdata}, timeout=30)
        auth = (PROFILE, answer.json()["line_key"])
        serials = [f"BENCH{index:05d}" for index in range(arguments.ingest_units)]
        with requests.Session() as session:
            for serial in serials + [f"DIRECT{index:05d}" for index in range(len(serials))]:
                session.post(f"{server.url}/mfg/{PROFILE}/units", auth=auth,
                             json={"serial": serial, "variant": "edge-100"}).raise_for_status()
        per_unit = arguments.batches * BATCH
        log(f"ingest: {len(serials)} units x {per_unit} events in batches of {BATCH}, "
            f"{arguments.clients} client processes")
        ingested = ingest_http(server, auth, serials, per_unit=per_unit,
                               clients=arguments.clients)
        log(f"  HTTP  : {ingested.events:,} events in {ingested.seconds:.1f} s = "
            f"{ingested.rate:,.0f} events/s; batch latency p50 {ingested.p50_ms:.1f} ms, "
            f"p99 {ingested.p99_ms:.1f} ms")
        log(f"  CPU   : of {ingested.machine_total:.1f} CPU-s the machine had, clients "
            f"{ingested.client_cpu:.1f} s ({ingested.client_cpu / ingested.machine_total:.0%})"
            f", server {ingested.server_cpu:.1f} s, PostgreSQL {ingested.database_cpu:.1f} s, "
            f"the rest (kernel, other programs) {ingested.other_cpu:.1f} s; idle "
            f"{1 - ingested.machine_busy / ingested.machine_total:.0%}")
        direct_events, direct_seconds = ingest_direct(
            engine, [f"DIRECT{index:05d}" for index in range(len(serials))], per_unit)
        direct_rate = direct_events / direct_seconds
        log(f"  direct: {direct_events:,} events in {direct_seconds:.1f} s = "
            f"{direct_rate:,.0f} events/s (executemany, a transaction per batch, one thread)")
        log(f"  ratio direct/HTTP: {direct_rate / ingested.rate:.2f}")
        with engine.connect() as connection:
            total = connection.execute(select(text("count(*)")).select_from(units)).scalar()
        log(f"search at {total:,} units ({arguments.searches} requests each, one client; "
            "ms: HTTP round trip / the server's own time / the same SQL directly):")
        searched = search(server, engine, token, loaded, arguments.searches)
        for row in searched:
            log(f"  {row.label:44} HTTP {row.http_p50:6.1f} / p95 {row.http_p95:6.1f}  "
                f"server {row.server_p50:6.1f} / {row.server_p95:6.1f}  "
                f"direct {row.direct_p50:6.1f} / {row.direct_p95:6.1f}  ({row.rows} rows)")
        return Outcome(name, ingested, direct_rate, searched)
    finally:
        server.stop()
        engine.dispose()


def summary(outcomes: list[Outcome]) -> None:
    names = [outcome.name for outcome in outcomes]
    log("\n| measure | " + " | ".join(names) + " | goal |")
    log("|---|" + "---|" * (len(names) + 1))
    log("| ingestion, events/s | " + " | ".join(f"{o.ingested.rate:,.0f}" for o in outcomes)
        + f" | ≥ {INGEST_GOAL:,} |")
    log("| batch latency p50 / p99, ms | " + " | ".join(
        f"{o.ingested.p50_ms:.0f} / {o.ingested.p99_ms:.0f}" for o in outcomes) + " | |")
    log("| direct executemany, events/s (ratio) | " + " | ".join(
        f"{o.direct_rate:,.0f} ({o.direct_rate / o.ingested.rate:.1f}x)" for o in outcomes)
        + " | |")
    for index, row in enumerate(outcomes[0].searched):
        log(f"| {row.label}: server p50 / p95 (direct p50), ms | " + " | ".join(
            f"{o.searched[index].server_p50:.1f} / {o.searched[index].server_p95:.1f} "
            f"({o.searched[index].direct_p50:.1f})" for o in outcomes)
            + f" | < {SEARCH_GOAL_MS:.0f} |")
    slow = [f"{o.name}: {row.label}" for o in outcomes for row in o.searched
            if row.server_p95 >= SEARCH_GOAL_MS]
    low = [o.name for o in outcomes if o.ingested.rate < INGEST_GOAL]
    log(f"goals: ingestion {'missed on ' + ', '.join(low) if low else 'met'}; "
        f"search {'missed: ' + '; '.join(slow) if slow else 'met'}")


def postgres_admin_url(given: str) -> str:
    if given:
        return given
    return subprocess.run([str(REPO / "tools" / "postgres")], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--units", type=int, default=100_000, help="units to search among")
    parser.add_argument("--ingest-units", type=int, default=200,
                        help="units sending events at once (each its own run)")
    parser.add_argument("--batches", type=int, default=5, help="batches of 100 per unit")
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument("--searches", type=int, default=20, help="requests per search")
    parser.add_argument("--postgres-url", default=os.environ.get("KILN_TEST_POSTGRES_URL", ""),
                        help="a PostgreSQL URL whose role may create databases")
    arguments = parser.parse_args()
    log(f"kiln server benchmark: {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")
    started = time.perf_counter()
    outcomes = []
    if arguments.database in ("sqlite", "both"):
        outcomes.append(bench_one("SQLite", "", arguments))
    if arguments.database in ("postgres", "both"):
        with postgres_database(postgres_admin_url(arguments.postgres_url)) as url:
            engine = create_engine(url)
            with engine.connect() as connection:
                log(f"PostgreSQL {connection.execute(text('SHOW server_version')).scalar()}")
            engine.dispose()
            outcomes.append(bench_one("PostgreSQL", url, arguments))
    summary(outcomes)
    log(f"benchmark time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
