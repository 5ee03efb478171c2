"""The `kiln` command.

Each package contributes its subcommands through the `kiln.commands` entry-point group (see
pyproject.toml), so this module never imports the packages built on top of the core. A
contributor's `add_commands(tree)` adds parsers to command groups; a group's handler is the
`handler` default of its parser and takes the parsed arguments. Entry points are named after
the group they add to (`image`, or `image.push` for a second contributor to `kiln image`).
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


def _command_word(argv: Sequence[str]) -> str | None:
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def build_tree(argv: Sequence[str] = ()) -> CommandTree:
    """The command tree. An entry point named `GROUP` or `GROUP.anything` adds to `kiln
    GROUP`; when `argv` names a known group only its entry points are loaded, so `kiln image
    …` does not pay for importing the server or the lab."""
    tree = CommandTree()
    entries = sorted(entry_points(group="kiln.commands"), key=lambda e: e.name)
    word = _command_word(argv)
    chosen = [e for e in entries if e.name.split(".")[0] == word] or entries
    for entry in chosen:
        add_commands: Callable[[CommandTree], None] = entry.load()
        add_commands(tree)
    return tree


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    tree = build_tree(words)
    arguments = tree.parser.parse_args(words)
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
