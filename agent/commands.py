"""`kiln agent run|status` (also `python3 -m agent …` where the `kiln` command is not)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import pending
from agent.config import DEFAULT_ETC, DEFAULT_RECOVERY, load_config
from agent.ddi import DdiClient
from agent.updater import Updater
from kiln.cli import CommandTree
from kiln.deviceclient import DeviceClient
from kiln.errors import KilnError
from recovery import boots
from recovery.layout import RecoveryLayout


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--etc", type=Path, default=DEFAULT_ETC,
                        help="where the restore wrote server.json, identity.json and the "
                             "device token (default /etc/kiln)")
    parser.add_argument("--recovery", type=Path, default=DEFAULT_RECOVERY,
                        help="RECOVERY's mount point (default /recovery)")


def _add(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    running = subcommands.add_parser("run", help="poll the server and take updates")
    _options(running)
    running.add_argument("--once", action="store_true", help="one cycle, then exit")
    running.add_argument("--cycles", type=int, default=None, help="at most this many cycles")
    running.add_argument("--poll-seconds", type=int, default=None,
                         help="poll this often instead of the server's interval")
    running.add_argument("--reboot-command", default="reboot",
                         help="how to reboot for a restore (default: reboot)")
    running.add_argument("--no-confirm-boot", action="store_true",
                         help="leave confirming the boot to the OS (kiln boot-done)")
    running.set_defaults(handler=_run)
    status = subcommands.add_parser("status", help="the update under way and the installed "
                                    "image, as JSON")
    _options(status)
    status.set_defaults(handler=_status)


def add_commands(tree: CommandTree) -> None:
    _add(tree.group("agent", "the update agent in the appliance's OS (hawkBit DDI)"))


def _run(arguments: argparse.Namespace) -> int:
    config = load_config(etc=arguments.etc, recovery=arguments.recovery,
                         reboot_argv=tuple(shlex.split(arguments.reboot_command)),
                         poll_seconds=arguments.poll_seconds,
                         confirm_boot=not arguments.no_confirm_boot)
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(DdiClient(config.controller_url, token=config.token,
                                               verify=config.verify))
        reporter = None
        if config.endpoints is not None:
            reporter = stack.enter_context(DeviceClient(
                config.endpoints, token=config.token, serial=config.serial,
                base_url=config.profile_url))
        result = Updater(config, client=client,
                         send_events=reporter.send_events if reporter else None).run(
            cycles=1 if arguments.once else arguments.cycles)
    print(f"agent: {result.outcome.value}: {result.message}", file=sys.stderr)
    return 0


def _status(arguments: argparse.Namespace) -> int:
    layout = RecoveryLayout(arguments.recovery)
    update = pending.load(layout)
    installed = boots.installed(layout)
    print(json.dumps({
        "installed": {"image_id": installed.image_id, "label": installed.label,
                      "trial": installed.trial} if installed else None,
        "pending_update": {"action_id": update.action_id, "label": update.label}
        if update else None}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m agent",
                                     description="the Kiln update agent")
    parser.add_argument("-v", "--verbose", action="store_true")
    subcommands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    subcommands.required = True
    _add(subcommands)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = arguments.handler(arguments)
    except KilnError as e:
        print(f"agent: error: {e}", file=sys.stderr)
        return 1
    return code
