"""`kiln manufdata …`: check a manufData file before it becomes a profile; print its schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.contract import ContractError
from kiln.manufdata import load_manufdata, manufdata_schema

if TYPE_CHECKING:
    from kiln.cli import CommandTree


def add_commands(tree: CommandTree) -> None:
    group = tree.group("manufdata", "check manufData files and print their JSON Schema")
    check = group.add_parser(
        "check", help="validate manufData files with the model units and the server use",
        description="Validate each FILE as a unit would read it; every problem is listed. "
                    "Exit status 1 when any file is invalid.")
    check.add_argument("files", type=Path, nargs="+", metavar="FILE")
    check.set_defaults(handler=_check)
    schema = group.add_parser("schema", help="print manufData's JSON Schema (schema 1)")
    schema.add_argument("--id", default=None, help="the schema's $id")
    schema.set_defaults(handler=_schema)


def _check(arguments: argparse.Namespace) -> int:
    bad = 0
    for path in arguments.files:
        try:
            manufdata = load_manufdata(path.read_bytes())
        except OSError as e:
            print(f"{path}: cannot read it: {e.strerror}", file=sys.stderr)
            bad += 1
        except ContractError as e:
            print(f"{path}: {e}", file=sys.stderr)
            bad += 1
        else:
            print(f"{path}: valid manufData for {manufdata.product}: {len(manufdata.files)} "
                  f"file(s), {len(manufdata.variants)} variant(s), {len(manufdata.hooks)} "
                  "hook(s)")
    return 1 if bad else 0


def _schema(arguments: argparse.Namespace) -> int:
    print(json.dumps(manufdata_schema(schema_id=arguments.id), indent=2))
    return 0
