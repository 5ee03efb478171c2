"""`kiln rollout …`: operators' rollouts from the command line, through the server's API
(`/api/v1/tenants/{tenant}/rollouts`) with an API token (`--token` or `KILN_TOKEN`; making
and stepping rollouts needs the `rollouts:write` scope). Output is the server's JSON.

    kiln rollout create --server URL --name spring --module 7 --wave 10% --wave 100% \\
        --variant edge-200 --success 90 --error 10 --on-error pause
    kiln rollout show --server URL 3          # the waves' progress
    kiln rollout failures --server URL 3      # each failed device and its messages
    kiln rollout start|pause|resume|next-wave|cancel|approve --server URL 3
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kiln.cli import CommandTree
from kiln.errors import KilnError

STEPS = {"approve": "approve a rollout that waits for approval",
         "start": "start a rollout: its first wave", "pause": "start no further wave",
         "resume": "go on with a paused rollout", "next-wave": "start the next wave now",
         "cancel": "cancel the rollout: its devices are asked to cancel"}
_WAVE = re.compile(r"^(\d{1,3})%$|^(\d{1,9})$")


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="URL",
                        help="the server's base URL, e.g. https://kiln.example:8443")
    parser.add_argument("--token", default=None,
                        help="API token (default: $KILN_TOKEN)")
    parser.add_argument("--ca-cert", type=Path, default=None, metavar="PEM",
                        help="verify the server's TLS certificate against this CA")
    parser.add_argument("--tenant", default="default")


def wave(text: str) -> dict[str, int]:
    """`10%` → a percentage of the rollout's devices; `25` → a count."""
    match = _WAVE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a wave is N% or a count N")
    return {"percent": int(match.group(1))} if match.group(1) else {"count": int(match.group(2))}


def add_commands(tree: CommandTree) -> None:
    group = tree.group("rollout", "make, follow and step rollouts on a Kiln server")
    create = group.add_parser("create", help="make a rollout (its devices and waves are "
                              "fixed now)")
    _server_options(create)
    create.add_argument("--name", required=True)
    create.add_argument("--module", type=int, required=True, metavar="ID",
                        help="the software module (every uploaded image is one)")
    create.add_argument("--wave", type=wave, action="append", required=True, dest="waves",
                        metavar="N%|N", help="a wave (repeat, in order; the last takes the rest)")
    create.add_argument("--kind", choices=("forced", "soft", "download_only"), default="forced")
    create.add_argument("--variant")
    create.add_argument("--feed")
    create.add_argument("--tag", action="append", default=[], dest="tags")
    create.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--device", action="append", default=[], dest="devices",
                        metavar="CONTROLLER_ID", help="take only these devices (repeat)")
    create.add_argument("--success", type=int, default=100, metavar="PERCENT",
                        help="a wave this done starts the next (default 100)")
    create.add_argument("--error", type=int, default=20, metavar="PERCENT",
                        help="a wave this failed stops the rollout (default 20)")
    create.add_argument("--on-error", choices=("pause", "abort"), default="pause")
    create.add_argument("--approval", action="store_true",
                        help="someone must approve it before it can start")
    create.set_defaults(handler=_create)
    for name, text in (("list", "rollouts, newest first"), ("show", "a rollout and its waves"),
                       ("failures", "each failed device and its messages")):
        parser = group.add_parser(name, help=text)
        _server_options(parser)
        if name != "list":
            parser.add_argument("rollout", type=int)
        parser.set_defaults(handler=_read, what=name)
    for step, text in STEPS.items():
        parser = group.add_parser(step, help=text)
        _server_options(parser)
        parser.add_argument("rollout", type=int)
        parser.set_defaults(handler=_step, step=step)


def _call(arguments: argparse.Namespace, method: str, path: str, **options: Any) -> Any:
    # Imported here: requests costs start-up time the appliance's commands should not pay.
    import requests  # noqa: PLC0415

    from kiln.image.push import describe_refusal, target_from  # noqa: PLC0415

    target = target_from(arguments.server, token=arguments.token, ca_cert=arguments.ca_cert)
    url = f"{target.server}/api/v1/tenants/{quote(arguments.tenant, safe='')}/rollouts{path}"
    try:
        answer = requests.request(method, url, verify=target.verify, timeout=(10, 60),
                                  headers={"Authorization": f"Bearer {target.token}"},
                                  **options)
    except requests.RequestException as e:
        raise KilnError(f"{url}: {e}") from None
    if not answer.ok:
        raise KilnError(describe_refusal(answer))
    return answer.json()


def _print(document: Any) -> int:
    print(json.dumps(document, indent=2))
    return 0


def _create(arguments: argparse.Namespace) -> int:
    attributes = {}
    for pair in arguments.attribute:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise KilnError(f"--attribute {pair!r}: expected KEY=VALUE")
        attributes[key] = value
    body = {"name": arguments.name, "module_id": arguments.module, "kind": arguments.kind,
            "waves": arguments.waves, "success_percent": arguments.success,
            "error_percent": arguments.error, "on_error": arguments.on_error,
            "approval_required": arguments.approval,
            "target_filter": {"variant": arguments.variant, "feed": arguments.feed,
                              "tags": arguments.tags, "attributes": attributes,
                              "controller_ids": arguments.devices}}
    return _print(_call(arguments, "POST", "", json=body))


def _read(arguments: argparse.Namespace) -> int:
    if arguments.what == "list":
        return _print(_call(arguments, "GET", ""))
    suffix = "/failures" if arguments.what == "failures" else ""
    return _print(_call(arguments, "GET", f"/{arguments.rollout}{suffix}"))


def _step(arguments: argparse.Namespace) -> int:
    return _print(_call(arguments, "POST", f"/{arguments.rollout}/{arguments.step}"))
