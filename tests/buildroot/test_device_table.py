"""board/kiln/device_table.txt gives the buildroot ramdisk the device nodes the Debian builder
puts in its cpio (initramfs.builder.EARLY_DEVICES), except /dev/console: buildroot's cpio step
makes that one itself, and a second mknod of it would fail the build."""

from __future__ import annotations

import stat

from initramfs.builder import EARLY_DEVICES
from tests.buildroot.layout import TREE


def test_the_early_device_nodes_match_the_debian_ramdisk() -> None:
    table = {}
    for line in (TREE / "board/kiln/device_table.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind, mode, uid, gid, major, minor, *_ = line.split()
            if kind == "c":
                table[name] = (int(mode, 8), (int(major), int(minor)), (uid, gid))
    expected = {f"/{node.name}": (stat.S_IMODE(node.mode), node.rdev, ("0", "0"))
                for node in EARLY_DEVICES if node.name != "dev/console"}
    assert table == expected
