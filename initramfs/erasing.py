"""The ramdisk's data erase: RECOVERY's state in, every region erased and verified
(`erase/`), empty file systems put back, a certificate on RECOVERY and at the server, a
verdict out. Never raises.

- What is erased and what is put back: `recovery.erasure`.
- The certificate is written to RECOVERY first (`certificates/`), then sent with the unit's
  device token together with the events spooled on RECOVERY; when the network or the server
  is down both stay on RECOVERY and go with the next boot that reaches the server.
- A failed erase keeps its request: the next boot tries again, after a pause that grows with
  each failure in a row (`state/erase-failed-boots`), never a tight reboot loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from erase import certificate
from erase.capabilities import detect
from erase.methods import Progress
from erase.run import RegionResult, erase_region
from initramfs import network
from initramfs.backoff import growing_pause, reset
from kiln.contract import parse
from kiln.deviceclient import DeviceClient
from kiln.errors import KilnError
from kiln.events import EventRecorder, Level, Result, spools
from kiln.manufdata import ServerEndpoints
from kiln.serverclient import ServerError
from provision.fill import EventProgress
from recovery.erasure import (
    Devices,
    EraseJournal,
    EraseTarget,
    finish_requests,
    plan_erase,
    put_back,
)
from recovery.layout import RecoveryLayout, StateFile

log = logging.getLogger(__name__)

TOP = "erase"
TOOL = "Kiln 0.1.0 (erase/)"
NETWORK_DEADLINE_SECONDS = 30.0


@dataclass(frozen=True, kw_only=True)
class EraseVerdict:
    ok: bool
    message: str
    pause_seconds: float


def _failed(layout: RecoveryLayout) -> float:
    return growing_pause(layout.state_file(StateFile.ERASE_FAILED_BOOTS))


def _progress(recorder: EventRecorder, name: str, label: str) -> Progress:
    """`provision.fill.EventProgress` (console, and an event with rate and time left every
    tenth of the way) fed with the erase methods' (done, total)."""
    shown = EventProgress(label, recorder=recorder, stage=name)

    def advance(done: int, total: int) -> None:
        shown.total = total
        shown.advance(done - shown.done)

    return advance


def _erase_target(target: EraseTarget, *, recorder: EventRecorder,
                  devices: Devices) -> list[RegionResult]:
    capabilities = detect(target.disk, scope=target.scope, root=devices.root)
    for reason in capabilities.passed_over:
        log.info("erase: %s: passed over: %s", target.disk.name, reason)
    results = []
    for region in target.regions:
        name = f"{TOP}/{region.name.split()[0].lower()}"
        recorder.start(name, f"{region.name} on {target.disk.model or target.disk.name} "
                             f"({target.scope}): {', '.join(capabilities.methods)}")

        def announce(line: str, name: str = name) -> None:
            log.info("erase: %s", line)
            recorder.log(name, Level.INFO, line)

        result = erase_region(region, capabilities, run_id=recorder.run_id,
                              progress=_progress(recorder, name, region.name),
                              announce=announce,
                              root=devices.root)
        recorder.finish(name, Result.SUCCESS if result.verified else Result.FAIL,
                        f"{result.method or 'every method failed'}; "
                        f"{result.canaries_surviving} of {result.canaries_written} "
                        "canaries survived")
        results.append(result)
    return results


def unsent_certificates(layout: RecoveryLayout) -> list[Path]:
    """Erase certificates on RECOVERY the server has not confirmed (no `.sent` beside)."""
    return [path for path in sorted(layout.certificates.glob("erase-*.json"))
            if not path.with_suffix(".sent").exists()]


def send_outbox(layout: RecoveryLayout, *, serial: str,
                connect: Callable[[], object] = network.bring_up) -> str:
    """Send what RECOVERY holds for the server: spooled events, unsent certificates."""
    try:
        endpoints = parse(ServerEndpoints, json.loads(
            layout.state_file(StateFile.SERVER).read_text()), subject="state/server.json")
        token = layout.state_file(StateFile.DEVICE_TOKEN).read_text().strip()
        identity = json.loads(layout.state_file(StateFile.IDENTITY).read_text())
        connect()
    except (OSError, ValueError, KilnError) as e:
        return f"kept on RECOVERY for a later boot ({e})"
    sent_events = sent_certificates = 0
    with DeviceClient(endpoints, token=token, serial=serial,
                      base_url=str(identity.get("profile_url", ""))) as client:
        try:
            for spool in spools(layout.logs):
                sent_events += spool.flush(client.send_events)
            for path in unsent_certificates(layout):
                client.send_erase_certificate(json.loads(path.read_text()))
                path.with_suffix(".sent").write_text(f"{time.time_ns()}\n")
                sent_certificates += 1
        except (ServerError, OSError, ValueError) as e:
            return (f"sent {sent_events} events and {sent_certificates} certificates, the "
                    f"rest kept on RECOVERY ({e})")
    return f"sent {sent_events} events and {sent_certificates} certificate(s) to the server"


def run_erase(recovery: Path, *, devices: Devices | None = None,
              connect: Callable[[], object] = network.bring_up) -> EraseVerdict:
    layout = RecoveryLayout(recovery)
    devices = devices or Devices()
    try:
        serial = str(json.loads(layout.state_file(StateFile.IDENTITY).read_text())["serial"])
    except (OSError, ValueError, KeyError) as e:
        return EraseVerdict(ok=False, pause_seconds=_failed(layout),
                            message=f"RECOVERY's state/identity.json cannot be read ({e}): "
                                    "was this unit manufactured?")
    recorder = EventRecorder(serial=serial, spool_dir=layout.logs)
    recorder.start(TOP, f"run {recorder.run_id}")
    journal = EraseJournal(layout)
    previous = journal.previous()
    interrupted = [*previous.get("interrupted_runs", []), previous["run_id"]] \
        if previous and "run_id" in previous else []
    if interrupted:
        log.warning("erase: run %s never finished (power cut or crash): erasing again",
                    interrupted[-1])
    started_ns = time.time_ns()
    results: list[RegionResult] = []
    try:
        targets = plan_erase(layout, devices=devices, journal=previous)
        journal.write(run_id=recorder.run_id, targets=targets, interrupted=interrupted)
        for target in targets:
            results += _erase_target(target, recorder=recorder, devices=devices)
        verified = bool(results) and all(result.verified for result in results)
        if verified:
            for target in targets:
                with recorder.stage(f"{TOP}/put-back", target.disk.name):
                    log.info("erase: %s", put_back(target, devices=devices))
    except (KilnError, OSError) as e:
        recorder.finish(TOP, Result.FAIL, f"{type(e).__name__}: {e}")
        return EraseVerdict(ok=False, pause_seconds=_failed(layout),
                            message=f"{type(e).__name__}: {e}")
    document = certificate.certificate(
        run_id=recorder.run_id, serial=serial, started_ns=started_ns,
        finished_ns=time.time_ns(), results=results, interrupted_runs=interrupted, tool=TOOL)
    path = certificate.save(document, layout.certificates)
    log.info("erase: certificate %s: %s", path.name, document["result"])
    if verified:
        finish_requests(layout)
        journal.remove()
        reset(layout.state_file(StateFile.ERASE_FAILED_BOOTS))
    summary = "; ".join(f"{r.region.name}: {r.method or 'not erased'}" for r in results)
    recorder.finish(TOP, Result.SUCCESS if verified else Result.FAIL,
                    f"{summary}; certificate {path.name}")
    log.info("erase: %s", send_outbox(layout, serial=serial, connect=connect))
    if not verified:
        return EraseVerdict(ok=False, pause_seconds=_failed(layout),
                            message=f"not every region was erased and verified: {summary}")
    return EraseVerdict(ok=True, pause_seconds=3.0,
                        message=f"{summary}; certificate {path.name} on RECOVERY")
