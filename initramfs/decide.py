"""The boot decision: pure logic over facts gathered by `initramfs.volumes`.

Order (DESIGN.md): `mfgurl=` → manufacture; a forced `kiln.mode=` → that mode; an erase
request on RECOVERY → erase; PRIMARY carries `/boot.normal` and no restore is requested →
normal boot, unless the OS left its last `boot_limit` boots unconfirmed (`recovery.boots`);
anything else → factory restore. A reason never carries the line key that
`mfgurl=` holds (it reaches the console and RECOVERY's log).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from kiln.cmdline import ForcedMode, KernelCommandLine


class BootMode(enum.StrEnum):
    MANUFACTURE = "manufacture"
    ERASE = "erase"
    RESTORE = "restore"
    NORMAL = "normal"
    SHELL = "shell"


class PrimaryState(enum.StrEnum):
    MISSING = "missing"  # no partition matches kiln.root
    UNREADABLE = "unreadable"  # found, but it does not mount
    NO_FLAG = "no-flag"  # mounts, but /boot.normal is absent: a restore never finished
    READY = "ready"  # mounts and carries /boot.normal


@dataclass(frozen=True)
class BootFacts:
    cmdline: KernelCommandLine
    recovery_found: bool
    erase_requested: bool
    restore_requested: bool
    primary: PrimaryState
    primary_detail: str = ""
    unconfirmed_boots: int = 0  # hand-overs to the OS it never confirmed (recovery.boots)
    boot_limit: int = 3


@dataclass(frozen=True)
class Decision:
    mode: BootMode
    reason: str


_FORCED = {
    ForcedMode.RESTORE: BootMode.RESTORE,
    ForcedMode.ERASE: BootMode.ERASE,
    ForcedMode.SHELL: BootMode.SHELL,
}


def redacted(url: str) -> str:
    """`http://line1:KEY@host/p` → `http://line1:***@host/p`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def decide(facts: BootFacts) -> Decision:
    if facts.cmdline.mfgurl:
        return Decision(BootMode.MANUFACTURE, f"mfgurl={redacted(facts.cmdline.mfgurl)}")
    if facts.cmdline.mode is not None:
        return Decision(_FORCED[facts.cmdline.mode], f"kiln.mode={facts.cmdline.mode}")
    if facts.erase_requested:
        return Decision(BootMode.ERASE, "an erase was requested on RECOVERY")
    gave_up = facts.unconfirmed_boots >= facts.boot_limit
    if facts.primary is PrimaryState.READY and not facts.restore_requested and not gave_up:
        return Decision(BootMode.NORMAL, "PRIMARY carries /boot.normal")
    if facts.restore_requested:
        reason = "a restore was requested on RECOVERY"
    elif facts.primary is PrimaryState.READY:
        reason = (f"the OS did not confirm its last {facts.unconfirmed_boots} boots: its "
                  "image counts a failed attempt")
    else:
        reason = {
            PrimaryState.MISSING: "no PRIMARY partition",
            PrimaryState.UNREADABLE: "PRIMARY does not mount",
            PrimaryState.NO_FLAG: "PRIMARY has no /boot.normal",
        }[facts.primary]
        if facts.primary_detail:
            reason += f" ({facts.primary_detail})"
    if not facts.recovery_found:
        reason += "; RECOVERY was not found either"
    return Decision(BootMode.RESTORE, reason)
