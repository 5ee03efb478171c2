"""The kernel command line contract between the boot loader, PXE and the ramdisk.

    mfgurl=URL                  manufacture this unit from the manufData at URL
    kiln.mode=restore|erase|shell   force a mode (boot-menu entries use it)
    kiln.root=LABEL=PRIMARY | UUID=…       the appliance OS's root (default LABEL=PRIMARY)
    kiln.debug=raise|selftest   fail on purpose after start-up (proves the crash path), or
                                check the ramdisk is complete before deciding
    console=…                   every console gets Kiln's output

Unknown `kiln.*` keys are collected as problems (PID 1 prints them on the console) instead of
being ignored: a typo in a boot entry must not silently change what a unit does.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass

DEFAULT_ROOT = "LABEL=PRIMARY"


class ForcedMode(enum.StrEnum):
    RESTORE = "restore"
    ERASE = "erase"
    SHELL = "shell"


class DebugAction(enum.StrEnum):
    RAISE = "raise"  # fail on purpose right after start-up: proves the crash path
    SELFTEST = "selftest"  # import every module, find every tool, list disks, then go on


_KNOWN_KILN_KEYS = frozenset({"kiln.mode", "kiln.root", "kiln.debug"})


@dataclass(frozen=True)
class KernelCommandLine:
    mfgurl: str | None = None
    mode: ForcedMode | None = None
    root: str = DEFAULT_ROOT
    debug: DebugAction | None = None
    consoles: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def console_devices(self) -> tuple[str, ...]:
        """`console=ttyS0,115200n8` → `/dev/ttyS0`; none given → `/dev/console`."""
        devices = [f"/dev/{c.split(',')[0]}" for c in self.consoles if c.split(",")[0]]
        return tuple(dict.fromkeys(devices)) or ("/dev/console",)


def _root_problem(value: str) -> str | None:
    kind, _, rest = value.partition("=")
    if kind not in ("LABEL", "UUID", "PARTUUID") or not rest:
        return f"kiln.root={value!r}: expected LABEL=…, UUID=… or PARTUUID=…"
    return None


def parse_cmdline(text: str) -> KernelCommandLine:
    """Parse /proc/cmdline. Never raises: problems are reported in `.problems`."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    mfgurl: str | None = None
    mode: ForcedMode | None = None
    root = DEFAULT_ROOT
    debug: DebugAction | None = None
    consoles: list[str] = []
    problems: list[str] = []
    for word in words:
        key, has_value, value = word.partition("=")
        if key == "console" and has_value:
            consoles.append(value)
        elif key == "mfgurl":
            if value.startswith(("http://", "https://")):
                mfgurl = value
            else:
                problems.append(f"mfgurl={value!r}: expected an http:// or https:// URL")
        elif key.startswith("kiln."):
            if key not in _KNOWN_KILN_KEYS:
                problems.append(f"unknown kernel parameter {word!r} (known: "
                                f"{', '.join(sorted(_KNOWN_KILN_KEYS))})")
            elif key == "kiln.mode":
                try:
                    mode = ForcedMode(value)
                except ValueError:
                    problems.append(f"kiln.mode={value!r}: expected one of "
                                    f"{', '.join(m.value for m in ForcedMode)}")
            elif key == "kiln.root":
                problem = _root_problem(value)
                if problem:
                    problems.append(problem)
                else:
                    root = value
            else:
                try:
                    debug = DebugAction(value)
                except ValueError:
                    problems.append(f"kiln.debug={value!r}: expected one of "
                                    f"{', '.join(d.value for d in DebugAction)}")
    return KernelCommandLine(
        mfgurl=mfgurl, mode=mode, root=root, debug=debug, consoles=tuple(consoles),
        problems=tuple(problems),
    )
