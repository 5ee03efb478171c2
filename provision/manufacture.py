"""The manufacture runner: from `mfgurl=` to a unit whose next boot restores its factory image.

`manufacture(mfgurl=…)` never raises; it returns an `Outcome`. Rules, in order:

1. **manufData** is fetched with the line's credentials. A server that cannot be reached or
   answers 5xx is retried with exponential back-off (`Backoff`), each wait on the console,
   until the back-off's deadline; a 4xx or a malformed manufData fails at once.
2. **Inventory and validation** (`provision.validate`) are pure: nothing is written anywhere.
   A unit without a real serial cannot report itself, so it fails on the console only.
3. **Report** the unit (serial, variant, DMI, MACs, hardware — the QA data), then the
   top-level `manufacture` start, `manufacture/manufdata` and `manufacture/validate` events
   are flushed. A validation mismatch → the whole report on the console, `manufacture/
   validate` and `manufacture` finish `fail` with every mismatch, flushed, and NO disk is
   touched.
4. **Disk steps** (`provision.mfgsteps.STEPS`, declared as data), each an event stage
   `manufacture/<name>` logged to the console, with manufData's hooks at their points
   (`provision.hooks`; `before_validate` hooks run before step 3's verdict, and the hardware
   is read and reported again after them): files (every file reachable, its size and — from
   the Kiln server — its sha256 as manufData says, or fail with the disks untouched),
   credentials (the server hands them out only while the run has started, so the start is
   flushed first, and before any disk is touched so a refusal leaves the disks alone),
   partition, mount RECOVERY (the event spool moves to
   RECOVERY's `log/`: what the network could not take is flushed on a later boot), fill
   RECOVERY, keys, state, credentials onto RECOVERY, boot setup, wipe PRIMARY's start.
5. `manufacture` finish `success`, flushed (tried for up to two minutes: the line wants the
   record); RECOVERY unmounted. Any exception on the way → `manufacture` finish `fail` with
   the error, the same flush, RECOVERY unmounted.

Events are spooled before they are sent (`kiln.events`): until RECOVERY exists the spool is on
the ramdisk's /run. A failed flush is logged and retried at the next flush point; only the
flush before the credentials is required (tried again three times over 14 s, then the run
fails with its disks untouched).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.errors import KilnError
from kiln.events import EventRecorder, Level, Result
from kiln.manufdata import HookPoint, ManufData
from kiln.serverclient import ServerClient, ServerError
from provision.hooks import hooks_at, run_hooks
from provision.inventory import Inventory, read_inventory, unit_report
from provision.mfgsteps import (
    STEPS,
    LogHooks,
    Machine,
    RunState,
    StepNote,
    hook_context,
    unmount_recovery,
)
from provision.validate import Validation, validate

log = logging.getLogger(__name__)

TOP = "manufacture"


class ManufactureError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential back-off for reaching the server at start."""

    first_seconds: float = 2.0
    factor: float = 2.0
    max_seconds: float = 30.0
    deadline_seconds: float = 600.0


@dataclass(frozen=True, kw_only=True)
class Outcome:
    ok: bool
    serial: str | None
    message: str
    events_sent: bool = field(default=False)  # every event reached the server


def fetch_manufdata(client: ServerClient, *, backoff: Backoff,
                    sleep: Callable[[float], None] = time.sleep) -> ManufData:
    started = time.monotonic()
    delay, attempt = backoff.first_seconds, 0
    while True:
        attempt += 1
        try:
            manufdata = client.manufdata()
        except ServerError as e:
            retryable = e.status is None or e.status >= 500
            waited = time.monotonic() - started
            if not retryable or waited + delay > backoff.deadline_seconds:
                raise
            log.warning("manufacture: %s; retrying in %.0f s (attempt %d, giving up after "
                        "%.0f s)", e, delay, attempt, backoff.deadline_seconds)
            sleep(delay)
            delay = min(delay * backoff.factor, backoff.max_seconds)
            continue
        log.info("manufacture: manufData for %s read from %s (%d file(s), %d variant(s))",
                 manufdata.product, client.manufdata_url, len(manufdata.files),
                 len(manufdata.variants))
        return manufdata


REQUIRED_FLUSH_WAITS = (2.0, 4.0, 8.0)  # a required flush tries again after these
# The last flush before the reboot: the line wants the unit's record, so it waits up to two
# minutes for the server; what is still unsent then stays on RECOVERY for a later boot.
FINAL_FLUSH_WAITS = (2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0)


def flush(state: RunState, *, required: bool = False, waits: tuple[float, ...] = (),
          sleep: Callable[[float], None] = time.sleep) -> bool:
    """Send the spooled events. A failure is logged and the events stay spooled for the next
    flush, after trying again after each of `waits`; a `required` flush tries again
    (`REQUIRED_FLUSH_WAITS`) and then raises."""
    pending = list(REQUIRED_FLUSH_WAITS if required else waits)
    while True:
        try:
            sent = state.recorder.spool.flush(state.client.send_events)
        except (ServerError, OSError) as e:
            if not pending:
                if required:
                    raise
                log.warning("manufacture: events stay spooled for later: %s", e)
                return False
            delay = pending.pop(0)
            log.warning("manufacture: cannot send events (%s); trying again in %.0f s", e, delay)
            sleep(delay)
            continue
        log.debug("manufacture: %d event(s) sent", sent)
        return True


def _report_validation(state: RunState, validation: Validation) -> None:
    recorder = state.recorder
    recorder.start(f"{TOP}/validate", f"variant {state.variant_name or 'none'}")
    if validation.ok:
        recorder.finish(f"{TOP}/validate", Result.SUCCESS,
                        f"{validation.variant.name if validation.variant else ''} matches")
        return
    for line in validation.report().splitlines():
        log.error("%s", line)
    problems = "\n".join(validation.problems)
    recorder.finish(f"{TOP}/validate", Result.FAIL, problems)
    raise ManufactureError(f"the hardware does not match manufData "
                           f"({len(validation.problems)} mismatch(es)):\n{problems}")


def _before_validate(state: RunState, validation: Validation) -> Validation:
    """Run the `before_validate` hooks (e.g. one that loads a driver); when any ran, the
    hardware is read, validated and reported again."""
    if not hooks_at(state.manufdata, HookPoint.BEFORE_VALIDATE, variant=state.variant_name):
        return validation
    run_hooks(state.manufdata, HookPoint.BEFORE_VALIDATE, hook_context(state))
    inventory = read_inventory(state.machine.root)
    validation = validate(state.manufdata, inventory)
    state.validation = validation
    state.variant_name = validation.variant.name if validation.variant else None
    state.client.report_unit(unit_report(inventory, variant=state.variant_name))
    return validation


def _run_steps(state: RunState) -> None:
    # The server hands out credentials only once it has the run's top-level start.
    flush(state, required=True)
    for step in STEPS:
        if isinstance(step, HookPoint):
            if run_hooks(state.manufdata, step, hook_context(state)):
                flush(state)
            continue
        name = f"{TOP}/{step.name}"
        log.info("manufacture: %s: %s", step.name, step.description)
        started = time.monotonic()
        state.recorder.start(name, step.description)
        try:
            note = step.run(state)
        except BaseException as e:
            state.recorder.finish(name, Result.FAIL, f"{type(e).__name__}: {e}")
            raise
        note = note or StepNote()
        if note.result is Result.WARN:
            log.warning("manufacture: %s: %s", step.name, note.message)
            state.recorder.log(name, Level.WARNING, note.message)
        state.recorder.finish(name, note.result, note.message)
        log.info("manufacture: %s done in %.1f s", step.name, time.monotonic() - started)
        if step.flush_after:
            flush(state, required=step.flush_required)


def _begin(client: ServerClient, *, machine: Machine, backoff: Backoff,
           started_ns: int) -> tuple[RunState, Validation]:
    manufdata = fetch_manufdata(client, backoff=backoff)
    inventory: Inventory = read_inventory(machine.root)
    log.info("manufacture: serial %s, %d disk(s), %d NIC(s), %d MiB RAM",
             inventory.serial or "(none)", len(inventory.disks), len(inventory.nics),
             inventory.memory_bytes >> 20)
    validation = validate(manufdata, inventory)
    variant = validation.variant.name if validation.variant else None
    if inventory.serial is None:  # it cannot report itself: the console is all there is
        for line in validation.report().splitlines():
            log.error("%s", line)
    report = unit_report(inventory, variant=variant)  # raises without a real serial
    client.report_unit(report)
    log.info("manufacture: unit %s reported as variant %s", report.serial, variant or "none")
    spool = machine.work / "spool"
    recorder = EventRecorder(serial=report.serial, spool_dir=spool)
    state = RunState(machine=machine, client=client, manufdata=manufdata,
                     validation=validation, recorder=recorder, serial=report.serial,
                     variant_name=variant, started_ns=started_ns)
    recorder.start(TOP, f"run {recorder.run_id} of {manufdata.product} from "
                        f"{client.manufdata_url}")
    recorder.start(f"{TOP}/manufdata", client.manufdata_url)
    recorder.finish(f"{TOP}/manufdata", Result.SUCCESS,
                    f"{len(manufdata.files)} file(s), {len(manufdata.variants)} variant(s)")
    return state, validation


def manufacture(*, mfgurl: str, machine: Machine | None = None,
                backoff: Backoff | None = None,
                log_hooks: LogHooks | None = None) -> Outcome:
    """Manufacture this unit (see the module's rules); never raises."""
    machine = machine or Machine()
    backoff = backoff or Backoff()
    started = time.monotonic()
    state: RunState | None = None
    try:
        with ServerClient(mfgurl) as client:
            try:
                state, validation = _begin(client, machine=machine, backoff=backoff,
                                           started_ns=time.time_ns())
                state.log_hooks = log_hooks
                try:
                    validation = _before_validate(state, validation)
                    _report_validation(state, validation)
                finally:
                    flush(state)
                _run_steps(state)
                state.recorder.finish(TOP, Result.SUCCESS, f"in {time.monotonic() - started:.0f} s")
                sent = flush(state, waits=FINAL_FLUSH_WAITS)
                unmount_recovery(state)
                message = f"unit {state.serial} manufactured in {time.monotonic() - started:.1f} s"
                return Outcome(ok=True, serial=state.serial, message=message, events_sent=sent)
            except BaseException as e:  # PID 1 calls this: report, never raise
                return _failed(state, e)
    except BaseException as e:  # closing the client failed
        return _failed(state, e)


def _failed(state: RunState | None, error: BaseException) -> Outcome:
    text = f"{type(error).__name__}: {error}"
    if not isinstance(error, KilnError):
        for line in traceback.format_exception(error):
            for part in line.rstrip().splitlines():
                log.error("%s", part)
    sent = False
    if state is not None:
        try:
            state.recorder.finish(TOP, Result.FAIL, text)
            sent = flush(state, waits=FINAL_FLUSH_WAITS)
        except BaseException as e:  # the spool or the server failed too
            log.error("manufacture: could not record the failure: %s", e)
        unmount_recovery(state)
    return Outcome(ok=False, serial=state.serial if state else None, message=text,
                   events_sent=sent)
