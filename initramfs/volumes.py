"""Finding and mounting RECOVERY and PRIMARY, and gathering the facts the decision needs."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from initramfs.decide import BootFacts, PrimaryState
from kiln.cmdline import KernelCommandLine
from kiln.errors import KilnError
from kiln.process import CommandError, run
from recovery.boots import BOOT_LIMIT, unconfirmed
from recovery.layout import FLAG_FILE, RECOVERY_LABEL, RecoveryLayout, Request

log = logging.getLogger(__name__)

_BY = {"LABEL": "by-label", "UUID": "by-uuid", "PARTUUID": "by-partuuid"}


class VolumeMissingError(KilnError):
    pass


class MountError(KilnError):
    pass


class Volumes(Protocol):
    def mount_recovery(self) -> Path | None:
        """RECOVERY mounted read-write, or None when this unit has none."""

    def mount_primary(self, spec: str) -> Path:
        """The partition named by `spec` (LABEL=…, UUID=…) mounted read-only.

        Raises VolumeMissingError when nothing matches, MountError when it does not mount.
        """


def device_for(spec: str, *, dev: Path = Path("/dev")) -> Path | None:
    kind, _, value = spec.partition("=")
    link = dev / "disk" / _BY[kind] / value
    return link.resolve() if link.exists() else None


class DeviceVolumes:
    """The real thing: udev's /dev/disk/by-* links and mount(8)."""

    def __init__(self, *, mount_root: Path = Path("/run/kiln"), sysroot: Path = Path("/sysroot")):
        self.mount_root = mount_root
        self.sysroot = sysroot
        self.mounted: list[Path] = []

    def _mount(self, device: Path, target: Path, options: Sequence[str]) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        try:
            run(["mount", "-o", ",".join(options), device, target], timeout=120)
        except CommandError as e:
            raise MountError(f"cannot mount {device} on {target}: {e}") from e
        self.mounted.append(target)
        return target

    def mount_recovery(self) -> Path | None:
        device = device_for(f"LABEL={RECOVERY_LABEL}")
        if device is None:
            return None
        return self._mount(device, self.mount_root / "recovery", ["rw", "noatime"])

    def mount_primary(self, spec: str) -> Path:
        device = device_for(spec)
        if device is None:
            raise VolumeMissingError(f"no partition has {spec}")
        return self._mount(device, self.sysroot, ["ro"])

    def unmount_all(self) -> None:
        for target in reversed(self.mounted):
            try:
                run(["umount", target], timeout=120)
            except CommandError as e:
                log.warning("%s", e)
        self.mounted.clear()


def _unconfirmed_boots(layout: RecoveryLayout | None) -> tuple[int, int]:
    """(boots the OS left unconfirmed, how many it may): an image on trial gets one."""
    found = unconfirmed(layout) if layout else None
    return (found.count, found.limit) if found else (0, BOOT_LIMIT)


def gather_facts(cmdline: KernelCommandLine, volumes: Volumes) -> tuple[BootFacts, Path | None]:
    """The facts for `decide`, and RECOVERY's mount point (for logs) when it was found."""
    recovery = None
    try:
        recovery = volumes.mount_recovery()
    except MountError as e:
        log.error("RECOVERY does not mount: %s", e)
    layout = RecoveryLayout(recovery) if recovery else None
    primary, detail = PrimaryState.MISSING, ""
    try:
        root = volumes.mount_primary(cmdline.root)
        if (root / FLAG_FILE).is_file():
            primary = PrimaryState.READY
        elif os.access(root, os.R_OK):
            primary = PrimaryState.NO_FLAG
        else:
            primary, detail = PrimaryState.UNREADABLE, f"{root} cannot be read"
    except VolumeMissingError as e:
        detail = str(e)
    except MountError as e:
        primary, detail = PrimaryState.UNREADABLE, str(e)
    facts = BootFacts(
        cmdline=cmdline,
        recovery_found=recovery is not None,
        erase_requested=bool(layout and layout.requested(Request.ERASE)),
        restore_requested=bool(layout and layout.requested(Request.RESTORE)),
        primary=primary,
        primary_detail=detail,
        unconfirmed_boots=_unconfirmed_boots(layout)[0],
        boot_limit=_unconfirmed_boots(layout)[1],
    )
    return facts, recovery
