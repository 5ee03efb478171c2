"""PID 1 starts whichever udevd the ramdisk has: Debian's systemd-udevd or buildroot's eudev
(installed as /sbin/udevd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from initramfs.system import UDEVD_PATHS, BootSystemError, find_udevd


def _executable(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_debian_first_then_eudev(tmp_path: Path) -> None:
    systemd, eudev = tmp_path / "lib/systemd/systemd-udevd", tmp_path / "sbin/udevd"
    candidates = (str(systemd), str(eudev))
    _executable(eudev)
    assert find_udevd(candidates) == str(eudev)
    _executable(systemd)
    assert find_udevd(candidates) == str(systemd)


def test_a_file_that_is_not_executable_does_not_count(tmp_path: Path) -> None:
    udevd = tmp_path / "udevd"
    udevd.write_text("")
    with pytest.raises(BootSystemError, match=f"no udev daemon: none of {udevd} is executable"):
        find_udevd((str(udevd),))


def test_the_known_places() -> None:
    assert UDEVD_PATHS[0] == "/lib/systemd/systemd-udevd"  # Debian bookworm's udev package
    assert "/sbin/udevd" in UDEVD_PATHS  # buildroot's eudev: --sbindir=/sbin
