"""`kiln recovery …`: look at and tend a RECOVERY volume's image store."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.cli import CommandTree


def add_commands(tree: CommandTree) -> None:
    """Registered later with the store commands."""
