"""PID 1 of the Kiln ramdisk.

Start-up: mount the kernel filesystems, read the command line, log to every console, start
udev and wait for it to settle, mount RECOVERY (and log there too), decide the boot mode, act:
manufacture (`mfgurl=`) brings the network up and runs `provision.manufacture`, then reboots;
factory restore runs `initramfs.restoring` (`recovery.restore`), data erase
`initramfs.erasing` (`erase/`), each then reboots.
PID 1 must never exit — that is a kernel panic — so every failure, expected or not, is logged
with its traceback and ends in a reboot after a pause, or in a shell with `kiln.mode=shell`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, Protocol

from initramfs import network, system
from initramfs.console import RunLog, uptime
from initramfs.decide import BootMode, Decision, decide
from initramfs.erasing import run_erase
from initramfs.restoring import run_restore
from initramfs.selftest import init_started_at, run_selftest
from initramfs.volumes import DeviceVolumes, gather_facts
from kiln.cmdline import DebugAction, ForcedMode, KernelCommandLine, parse_cmdline
from provision.manufacture import manufacture
from provision.mfgsteps import LogHooks
from recovery.boots import count_handover
from recovery.layout import FLAG_FILE, RecoveryLayout

log = logging.getLogger("kiln.init")

CRASH_PAUSE_SECONDS = 10.0
RAMDISK_VERSION_FILE = Path("/etc/kiln/boot.json")  # optional: the ramdisk's own version
NOT_BUILT_PAUSE_SECONDS = 5.0
MANUFACTURED_PAUSE_SECONDS = 3.0
MANUFACTURE_FAILED_PAUSE_SECONDS = 10.0


class InjectedFailure(RuntimeError):
    """Raised on purpose by `kiln.debug=raise` to prove the crash path."""


def read_cmdline(path: Path = Path("/proc/cmdline")) -> KernelCommandLine:
    try:
        return parse_cmdline(path.read_text())
    except OSError:
        return parse_cmdline("")


def announce(decision: Decision) -> None:
    now = uptime()
    started = init_started_at()
    since = f", {now - started:.3f} s after /init started" if started is not None else ""
    log.info("decision: %s (%s) at %.3f s%s", decision.mode, decision.reason, now, since)


def act(decision: Decision, *, volumes: DeviceVolumes, run_log: RunLog,
        cmdline: KernelCommandLine, recovery: Path | None = None) -> NoReturn:
    if decision.mode is BootMode.NORMAL:
        if recovery is not None:
            try:
                counted = count_handover(RecoveryLayout(recovery), label=read_flag(volumes))
                log.info("normal boot %d of %s that the OS has not confirmed yet",
                         counted.count, counted.label or "the installed image")
            except OSError as e:  # never a reason not to boot
                log.warning("cannot count this boot on RECOVERY: %s", e)
        log.info("normal boot: handing over to %s's /sbin/init", cmdline.root)
        run_log.detach_recovery()
        system.switch_root(volumes.sysroot)
    if decision.mode is BootMode.SHELL:
        shell_then_reboot(cmdline)
    if decision.mode is BootMode.MANUFACTURE and cmdline.mfgurl:
        run_manufacture(cmdline.mfgurl, volumes=volumes, run_log=run_log)
    if decision.mode is BootMode.RESTORE:
        recovery_run("restore", run_restore, volumes=volumes, run_log=run_log)
    if decision.mode is BootMode.ERASE:
        recovery_run("erase", run_erase, volumes=volumes, run_log=run_log)
    log.warning("%s is not built into this ramdisk yet; rebooting in %.0f s",
                decision.mode, NOT_BUILT_PAUSE_SECONDS)
    finish(volumes, run_log, pause=NOT_BUILT_PAUSE_SECONDS)


def run_manufacture(mfgurl: str, *, volumes: DeviceVolumes, run_log: RunLog) -> NoReturn:
    """Network, then the runner (`provision.manufacture`), then a reboot either way: the
    next boot of a manufactured unit restores from RECOVERY."""
    # An old RECOVERY (a unit manufactured again) must not be in use while it is replaced.
    run_log.detach_recovery()
    volumes.unmount_all()
    try:
        network.bring_up()
    except network.NetworkError as e:
        log.error("manufacture failed: %s; rebooting in %.0f s", e,
                  MANUFACTURE_FAILED_PAUSE_SECONDS)
        finish(volumes, run_log, pause=MANUFACTURE_FAILED_PAUSE_SECONDS)
    outcome = manufacture(mfgurl=mfgurl, log_hooks=LogHooks(attach=run_log.attach_recovery,
                                                            detach=run_log.detach_recovery))
    if outcome.ok:
        log.info("manufacture succeeded: %s; rebooting in %.0f s", outcome.message,
                 MANUFACTURED_PAUSE_SECONDS)
        finish(volumes, run_log, pause=MANUFACTURED_PAUSE_SECONDS)
    log.error("manufacture failed: %s; rebooting in %.0f s",
              "; ".join(outcome.message.splitlines()), MANUFACTURE_FAILED_PAUSE_SECONDS)
    finish(volumes, run_log, pause=MANUFACTURE_FAILED_PAUSE_SECONDS)


class Verdict(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def message(self) -> str: ...
    @property
    def pause_seconds(self) -> float: ...


def recovery_run(what: str, runner: Callable[[Path], Verdict], *, volumes: DeviceVolumes,
                 run_log: RunLog) -> NoReturn:
    """A run on RECOVERY's state (`initramfs.restoring`, `initramfs.erasing`), then a reboot:
    into what it made, or to try again."""
    # PRIMARY may be mounted (read-only, for the decision): it is about to be remade.
    run_log.detach_recovery()
    volumes.unmount_all()
    recovery = volumes.mount_recovery()
    if recovery is None:
        log.error("%s: no RECOVERY volume; rebooting in %.0f s", what,
                  MANUFACTURE_FAILED_PAUSE_SECONDS)
        finish(volumes, run_log, pause=MANUFACTURE_FAILED_PAUSE_SECONDS)
    run_log.attach_recovery(RecoveryLayout(recovery).logs)
    verdict = runner(recovery)
    if verdict.ok:
        log.info("%s succeeded: %s; rebooting in %.0f s", what, verdict.message,
                 verdict.pause_seconds)
    else:
        log.error("%s failed: %s; rebooting in %.0f s", what,
                  "; ".join(verdict.message.splitlines()), verdict.pause_seconds)
    finish(volumes, run_log, pause=verdict.pause_seconds)


def read_flag(volumes: DeviceVolumes) -> str:
    try:
        return (volumes.sysroot / FLAG_FILE).read_text().strip()
    except OSError:
        return ""


def shell_then_reboot(cmdline: KernelCommandLine) -> NoReturn:
    console = cmdline.console_devices[-1]
    log.info("starting a shell on %s; leave it to reboot", console)
    system.run_shell(console)
    system.reboot()


def finish(volumes: DeviceVolumes | None, run_log: RunLog | None, *, pause: float) -> NoReturn:
    if run_log:
        run_log.detach_recovery()
    if volumes:
        volumes.unmount_all()
    time.sleep(pause)
    system.reboot()


def boot(run_log: RunLog, cmdline: KernelCommandLine, volumes: DeviceVolumes) -> NoReturn:
    for problem in cmdline.problems:
        log.error("kernel command line: %s", problem)
    if cmdline.debug is DebugAction.RAISE:
        raise InjectedFailure("kiln.debug=raise: failing on purpose")
    if cmdline.mode is ForcedMode.SHELL:
        shell_then_reboot(cmdline)
    seconds = system.start_udev()
    log.info("udev settled in %.2f s", seconds)
    if cmdline.debug is DebugAction.SELFTEST:
        run_selftest()
    facts, recovery = gather_facts(cmdline, volumes)
    if recovery is not None:
        path = run_log.attach_recovery(RecoveryLayout(recovery).logs)
        log.info("RECOVERY found; logging to %s", path)
    else:
        log.warning("no RECOVERY volume found")
    decision = decide(facts)
    announce(decision)
    act(decision, volumes=volumes, run_log=run_log, cmdline=cmdline, recovery=recovery)


def ramdisk_version(path: Path = RAMDISK_VERSION_FILE) -> str:
    """The ramdisk's version for its first line (" 2.1.0"), when its /etc/kiln/boot.json
    (`recovery.bootfiles`'s format) says it; else nothing."""
    try:
        version = json.loads(path.read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f" {version}" if isinstance(version, str) and version.isprintable() else ""


def main() -> NoReturn:
    run_log: RunLog | None = None
    volumes: DeviceVolumes | None = None
    cmdline = parse_cmdline("")
    try:
        system.early_mounts()
        cmdline = read_cmdline()
        run_log = RunLog(cmdline.console_devices)
        log.info("Kiln ramdisk%s started (run %s) at %.3f s", ramdisk_version(),
                 run_log.run_id, uptime())
        volumes = DeviceVolumes()
        boot(run_log, cmdline, volumes)
    except BaseException:  # PID 1 must not die: anything at all ends in a defined state
        text = traceback.format_exc()
        if run_log is None:
            sys.stderr.write(text)
            sys.stderr.flush()
        for line in text.rstrip().splitlines():
            log.critical("%s", line)
        if cmdline.mode is ForcedMode.SHELL:
            try:
                shell_then_reboot(cmdline)
            except BaseException:
                log.critical("the shell failed too")
        log.critical("PID 1 failed; rebooting in %.0f s", CRASH_PAUSE_SECONDS)
        try:
            finish(volumes, run_log, pause=CRASH_PAUSE_SECONDS)
        except BaseException:
            system.reboot()


if __name__ == "__main__":
    main()
