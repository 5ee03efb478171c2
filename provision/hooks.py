"""manufData's hook steps: scripts the unit downloads, verifies and runs at named points.

Rules:
- A hook runs when its point comes (`kiln.manufdata.HookPoint`) and its `variants` are empty
  or name this unit's variant, in manufData's order.
- Its file is fetched through the verified reader (sha256 and size checked before it may run)
  into the ramdisk's work directory, made executable and run directly: a script needs a `#!`
  line (the ramdisk has busybox `sh` and `python3`).
- It runs with a minimal environment plus `KILN_HOOK_POINT`, `KILN_SERIAL`, `KILN_VARIANT`,
  `KILN_PRODUCT`, `KILN_RUN_ID` and, once RECOVERY is mounted, `KILN_RECOVERY`; never the
  line key or the unit's password. Its working directory is its own empty directory.
- Each run is an event stage `manufacture/hooks/<name>`; its output goes to the console and
  the run's log line by line, and its tail into a log event.
- Exit status policy: 0 is success. Anything else, a timeout or a script that cannot start is
  a failure: with `on_failure: fail` the manufacture fails (`HookError`), with `warn` the
  stage finishes `warn` and manufacture goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.download import download_verified
from kiln.errors import KilnError
from kiln.events import EventRecorder, Level, Result
from kiln.manufdata import HookPoint, HookStep, ManufData, OnFailure
from kiln.process import CommandError, CommandTimeout, minimal_environment, run
from kiln.serverclient import ServerClient

log = logging.getLogger(__name__)

STAGE = "manufacture/hooks"
MAX_HOOK_BYTES = 64 * 1024 * 1024
OUTPUT_TAIL_BYTES = 4096


class HookError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class HookContext:
    client: ServerClient
    recorder: EventRecorder
    work: Path  # scripts are fetched and run under work/hooks/
    serial: str
    variant: str | None
    product: str
    recovery: Path | None  # RECOVERY's mount point, once mounted


def hooks_at(manufdata: ManufData, point: HookPoint, *, variant: str | None) -> list[HookStep]:
    return [hook for hook in manufdata.hooks
            if hook.point is point and (not hook.variants or variant in hook.variants)]


def _fetch(hook: HookStep, context: HookContext) -> Path:
    directory = context.work / "hooks" / hook.name
    directory.mkdir(parents=True, exist_ok=True)
    size = context.client.probe(hook.url).size_bytes
    if size is None or size > MAX_HOOK_BYTES:
        raise HookError(f"{hook.url} is {'of unknown size' if size is None else f'{size} bytes'}"
                        f"; a hook may be at most {MAX_HOOK_BYTES} bytes")
    with contextlib.closing(context.client.source(hook.url)) as source:
        script = download_verified(source, directory / "script", sha256=hook.sha256, size=size)
    script.chmod(0o700)
    return script


def _environment(hook: HookStep, context: HookContext) -> dict[str, str]:
    extra = {"KILN_HOOK_POINT": str(hook.point), "KILN_SERIAL": context.serial,
             "KILN_VARIANT": context.variant or "", "KILN_PRODUCT": context.product,
             "KILN_RUN_ID": context.recorder.run_id, "HOME": "/root"}
    if context.recovery is not None:
        extra["KILN_RECOVERY"] = os.fspath(context.recovery)
    return minimal_environment(extra)


def _log_output(hook: HookStep, output: bytes, recorder: EventRecorder) -> None:
    text = output.decode("utf-8", "replace")
    for line in text.splitlines():
        log.info("hook %s: %s", hook.name, line)
    if text.strip():
        recorder.log(f"{STAGE}/{hook.name}", Level.INFO,
                     text[-OUTPUT_TAIL_BYTES:])


def _execute(hook: HookStep, script: Path, context: HookContext) -> str | None:
    """Run the script; None when it succeeded, else why it did not."""
    try:
        result = run([script], timeout=hook.timeout_seconds, cwd=script.parent,
                     env=_environment(hook, context), success_codes=range(-255, 256))
    except CommandTimeout as e:
        _log_output(hook, e.stderr, context.recorder)
        return f"did not finish within {hook.timeout_seconds} s"
    except CommandError as e:  # it could not start
        return f"cannot start ({e}); a script needs a #! line"
    _log_output(hook, result.stdout + result.stderr, context.recorder)
    if result.returncode != 0:
        return f"exited with status {result.returncode}"
    return None


def run_hook(hook: HookStep, context: HookContext) -> None:
    stage = f"{STAGE}/{hook.name}"
    started = time.monotonic()
    context.recorder.start(stage, f"{hook.point}: {hook.url}")
    log.info("manufacture: hook %s (%s)", hook.name, hook.point)
    try:
        script = _fetch(hook, context)
    except KilnError as e:
        failure: str | None = f"cannot fetch it: {e}"
    else:
        failure = _execute(hook, script, context)
    seconds = time.monotonic() - started
    if failure is None:
        context.recorder.finish(stage, Result.SUCCESS, f"exit 0 after {seconds:.1f} s")
        log.info("manufacture: hook %s succeeded in %.1f s", hook.name, seconds)
        return
    message = f"hook {hook.name} {failure}"
    if hook.on_failure is OnFailure.WARN:
        log.warning("manufacture: %s (on_failure: warn, going on)", message)
        context.recorder.finish(stage, Result.WARN, message)
        return
    log.error("manufacture: %s", message)
    context.recorder.finish(stage, Result.FAIL, message)
    raise HookError(message)


def run_hooks(manufdata: ManufData, point: HookPoint, context: HookContext) -> int:
    """Run the hooks at `point`; return how many ran. Raises `HookError` for a failure whose
    policy is `fail`."""
    selected = hooks_at(manufdata, point, variant=context.variant)
    for hook in selected:
        run_hook(hook, context)
    return len(selected)
