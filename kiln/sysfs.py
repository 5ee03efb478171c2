"""Reading sysfs and procfs attribute files: a missing or unreadable file is `None`, never an
error (a kernel without a driver, a VM without DMI, a file readable by root only)."""

from __future__ import annotations

from pathlib import Path


def read_attr(path: Path) -> str | None:
    """The file's text, stripped of surrounding blanks; None if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def read_hex_id(path: Path) -> str | None:
    """A vendor/device id (`0x8086` or `8086`) as 4 lower-case hex digits."""
    text = read_attr(path)
    if not text:
        return None
    try:
        return f"{int(text, 16):04x}"
    except ValueError:
        return None


def read_flag(path: Path) -> bool:
    """A 0/1 attribute (ro, removable, rotational); absent reads as False."""
    return read_attr(path) == "1"
