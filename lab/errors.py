"""The lab's errors: every one is a `KilnError` whose message says what to look at."""

from __future__ import annotations

from kiln.errors import KilnError


class LabError(KilnError):
    """The lab could not do what was asked (bad spec, missing firmware, QEMU failed)."""


class ConsoleTimeout(LabError):
    """The console did not show a pattern in time; the message quotes the console's tail."""


class VmExited(LabError):
    """QEMU exited while something was waiting on it; the message quotes console and stderr."""


class QmpError(LabError):
    """A QMP command failed, or QMP could not be reached."""
