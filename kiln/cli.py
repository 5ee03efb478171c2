"""The `kiln` command.

Each package contributes its subcommands through the `kiln.commands` entry-point group (see
pyproject.toml), so this module never imports the packages built on top of the core. A
contributor's `add_commands(tree)` adds parsers to command groups; a group's handler is the
`handler` default of its parser and takes the parsed arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from kiln.errors import KilnError

Handler = Callable[[argparse.Namespace], int]


class CommandTree:
    """The top-level parser and its command groups (`kiln image …`, `kiln server …`)."""

    def __init__(self) -> None:
        self.parser = argparse.ArgumentParser(
            prog="kiln", description="Manufacture, restore, erase and update x86 appliances."
        )
        self.parser.add_argument(
            "-v", "--verbose", action="count", default=0, help="log more (twice: debug)"
        )
        self._commands = self.parser.add_subparsers(dest="command", metavar="COMMAND")
        self._commands.required = True
        self._groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}

    def group(self, name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        """The sub-commands of `kiln NAME`, created on first use."""
        if name not in self._groups:
            parser = self._commands.add_parser(name, help=help, description=help)
            subcommands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            subcommands.required = True
            self._groups[name] = subcommands
        return self._groups[name]

    def command(self, name: str, help: str) -> argparse.ArgumentParser:
        """A top-level command without sub-commands (`kiln status`)."""
        return self._commands.add_parser(name, help=help, description=help)


def build_tree() -> CommandTree:
    tree = CommandTree()
    for entry in sorted(entry_points(group="kiln.commands"), key=lambda e: e.name):
        add_commands: Callable[[CommandTree], None] = entry.load()
        add_commands(tree)
    return tree


def main(argv: Sequence[str] | None = None) -> int:
    tree = build_tree()
    arguments = tree.parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(arguments.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    handler: Handler = arguments.handler
    try:
        return handler(arguments)
    except KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`kiln image inspect X | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
