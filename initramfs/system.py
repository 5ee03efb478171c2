"""What PID 1 does to the machine: mounts, modules, udev, shell, switch_root, reboot."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from kiln.errors import KilnError
from kiln.process import CommandError, minimal_environment, run

log = logging.getLogger(__name__)

# Where udevd lives: Debian's udev package, then buildroot's eudev (`--sbindir=/sbin`).
UDEVD_PATHS = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd", "/sbin/udevd")
_RB_AUTOBOOT = 0x01234567
_RB_POWER_OFF = 0x4321FEDC

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_SAFE = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
_EARLY_MOUNTS = (
    ("proc", "/proc", "proc", _SAFE, ""),
    ("sysfs", "/sys", "sysfs", _SAFE, ""),
    ("devtmpfs", "/dev", "devtmpfs", _MS_NOSUID, "mode=0755"),
    ("tmpfs", "/run", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", _MS_NOSUID | _MS_NOEXEC, "gid=5,mode=0620"),
)


class BootSystemError(KilnError):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2) directly: before /proc and /dev exist, mount(8) may not work."""
    Path(target).mkdir(parents=True, exist_ok=True)
    result = _libc().mount(source.encode(), target.encode(), fstype.encode(), flags,
                           data.encode())
    if result != 0:
        errno = ctypes.get_errno()
        if errno != 16:  # EBUSY: already mounted (the kernel may have mounted devtmpfs)
            raise BootSystemError(f"mount {fstype} on {target}: {os.strerror(errno)}")


def early_mounts() -> None:
    for source, target, fstype, flags, data in _EARLY_MOUNTS:
        _mount(source, target, fstype, flags, data)
    efivars = Path("/sys/firmware/efi/efivars")
    if efivars.is_dir():
        with contextlib.suppress(CommandError):
            run(["modprobe", "efivarfs"], timeout=60)
        try:
            _mount("efivarfs", str(efivars), "efivarfs", _SAFE, "")
        except BootSystemError as e:
            log.warning("%s", e)


def find_udevd(candidates: Sequence[str] = UDEVD_PATHS) -> str:
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise BootSystemError(f"no udev daemon: none of {', '.join(candidates)} is executable")


def start_udev(*, settle_timeout: float = 120) -> float:
    """Start udevd, replay the kernel's device events and wait until they are handled.

    Returns the seconds it took. Waiting is event-driven (`udevadm settle`), never a fixed
    grace period.
    """
    started = time.monotonic()
    run([find_udevd(), "--daemon", "--resolve-names=never"], timeout=60)
    run(["udevadm", "trigger", "--type=subsystems", "--action=add"], timeout=60)
    run(["udevadm", "trigger", "--type=devices", "--action=add"], timeout=60)
    run(["udevadm", "settle", f"--timeout={int(settle_timeout)}"], timeout=settle_timeout + 30)
    return time.monotonic() - started


def stop_udev() -> None:
    with contextlib.suppress(CommandError):
        run(["udevadm", "control", "--exit"], timeout=60)


def sync_disks() -> None:
    os.sync()


def reboot(*, power_off: bool = False) -> NoReturn:
    sync_disks()
    _libc().reboot(_RB_POWER_OFF if power_off else _RB_AUTOBOOT)
    # Only reached when the kernel refused (not PID 1, no CAP_SYS_BOOT).
    raise BootSystemError(f"reboot(2) failed: {os.strerror(ctypes.get_errno())}")


def run_shell(console: str) -> None:
    """An interactive shell on `console`; returns when it exits."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child becomes the shell
        try:
            os.setsid()
            fd = os.open(console, os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(fd, target)
            env = minimal_environment({"HOME": "/root", "TERM": "vt100", "PS1": "kiln# "})
            os.execve("/bin/sh", ["/bin/sh", "-i"], env)  # noqa: S606 - PID 1 hands over
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def switch_root(new_root: Path, init: str = "/sbin/init") -> NoReturn:
    """Hand the machine to the OS: util-linux switch_root moves /dev, /proc, /sys and /run,
    empties the ramdisk and executes the OS's init as PID 1."""
    target = new_root / init.lstrip("/")
    if not target.exists() and not target.is_symlink():
        raise BootSystemError(f"{new_root} has no {init}")
    stop_udev()
    sync_disks()
    os.execv("/sbin/switch_root", ["switch_root", str(new_root), init])  # noqa: S606
