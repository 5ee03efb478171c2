"""`kiln request restore|erase|cancel`, `kiln boot-done` and `kiln status`, run inside the
appliance's OS, where RECOVERY is mounted on /recovery (the fstab restore writes)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.image.signing import TrustStore
from recovery.boots import confirm
from recovery.layout import RecoveryLayout, Request
from recovery.requests import cancel, request_erase, request_restore, status
from recovery.store import ImageStore

if TYPE_CHECKING:
    from kiln.cli import CommandTree, Handler

DEFAULT_RECOVERY = Path("/recovery")


def _recovery(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recovery", type=Path, default=DEFAULT_RECOVERY, metavar="DIR",
                        help=f"RECOVERY's mount point (default {DEFAULT_RECOVERY})")


def add_request(tree: CommandTree) -> None:
    group = tree.group("request", "ask the next boot for a factory restore or a data erase")
    restore = group.add_parser("restore", help="restore the newest good image at the next boot")
    _recovery(restore)
    data = restore.add_mutually_exclusive_group()
    data.add_argument("--keep-data", dest="keep_data", action="store_true", default=True,
                      help="keep DATA as it is (the default)")
    data.add_argument("--wipe-data", dest="keep_data", action="store_false",
                      help="give DATA a fresh, empty file system (not an erase)")
    restore.add_argument("--reason", default="", help="recorded with the request")
    restore.set_defaults(handler=_restore)
    erase = group.add_parser("erase", help="erase PRIMARY and DATA at the next boot, then "
                                           "restore")
    _recovery(erase)
    erase.add_argument("--yes", action="store_true", required=True,
                       help="required: every customer file on this unit will be destroyed")
    erase.add_argument("--reason", default="")
    erase.set_defaults(handler=_erase)
    withdraw = group.add_parser("cancel", help="withdraw a pending request")
    _recovery(withdraw)
    withdraw.add_argument("request", choices=[r.value for r in Request])
    withdraw.set_defaults(handler=_cancel)


def add_status(tree: CommandTree) -> None:
    parser = tree.command("status", "this unit: installed image, RECOVERY's images and their "
                                    "history, pending requests, last ramdisk runs (JSON)")
    _recovery(parser)
    parser.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    parser.set_defaults(handler=_status)


def add_boot_done(tree: CommandTree) -> None:
    parser = tree.command("boot-done", "confirm that the OS came up: the Kiln ramdisk stops "
                                       "counting this image's boots (run it at every boot)")
    _recovery(parser)
    parser.set_defaults(handler=_boot_done)


def _on_recovery(handler: Callable[[argparse.Namespace, RecoveryLayout], int]) -> Handler:
    """The command's handler, given RECOVERY's layout; exit 2 when --recovery is not one."""

    def run(arguments: argparse.Namespace) -> int:
        layout = RecoveryLayout(arguments.recovery)
        if not layout.state.is_dir():
            print(f"kiln: {arguments.recovery} is not a RECOVERY volume (no state/); is it "
                  "mounted?", file=sys.stderr)
            return 2
        return handler(arguments, layout)

    return run


@_on_recovery
def _restore(arguments: argparse.Namespace, layout: RecoveryLayout) -> int:
    path = request_restore(layout, keep_data=arguments.keep_data, reason=arguments.reason)
    kept = "kept" if arguments.keep_data else "given a fresh, empty file system"
    print(f"restore requested ({path}): the next boot restores; DATA will be {kept}")
    return 0


@_on_recovery
def _erase(arguments: argparse.Namespace, layout: RecoveryLayout) -> int:
    path = request_erase(layout, reason=arguments.reason)
    print(f"erase requested ({path}): the next boot erases PRIMARY and DATA, then restores")
    return 0


@_on_recovery
def _cancel(arguments: argparse.Namespace, layout: RecoveryLayout) -> int:
    withdrawn = cancel(layout, Request(arguments.request))
    print(f"{arguments.request} request {'withdrawn' if withdrawn else 'was not pending'}")
    return 0


@_on_recovery
def _boot_done(arguments: argparse.Namespace, layout: RecoveryLayout) -> int:
    print("boot confirmed" if confirm(layout) else "no unconfirmed boot was counted")
    return 0


@_on_recovery
def _status(arguments: argparse.Namespace, layout: RecoveryLayout) -> int:
    store = ImageStore(layout.root, TrustStore.from_paths([layout.keys]))
    print(json.dumps(status(layout, store, root=arguments.root), indent=2))
    return 0
