"""A reproducible `newc` cpio writer: sorted entries, fixed owners and timestamps.

Written here rather than with cpio(1) so the archive depends only on the tree's contents:
inode numbers are assigned in order, every entry belongs to root, every mtime is the same.
Hard links are stored as separate files (the kernel's unpacker handles both).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class DeviceNode:
    path: str  # inside the archive, no leading slash
    mode: int  # including S_IFCHR / S_IFBLK
    major: int
    minor: int


def _pad(length: int) -> bytes:
    return b"\x00" * (-length % 4)


class CpioWriter:
    def __init__(self, out: IO[bytes], *, mtime: int = 0):
        self.out = out
        self.mtime = mtime
        self._inode = 0

    def _entry(self, name: str, *, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
               ) -> None:
        self._inode += 1
        encoded = name.encode() + b"\x00"
        fields = (
            self._inode, mode, 0, 0, 1 if not stat.S_ISDIR(mode) else 2, self.mtime, len(data),
            0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.out.write(header + encoded + _pad(len(header) + len(encoded)))
        self.out.write(data + _pad(len(data)))

    def add_tree(self, root: Path) -> int:
        """Add everything under `root` (not `root` itself), sorted; return the entry count."""
        count = 0
        for relative in sorted(_walk(root)):
            path = root / relative
            info = path.lstat()
            mode = info.st_mode
            if stat.S_ISLNK(mode):
                self._entry(relative, mode=mode, data=os.readlink(path).encode())
            elif stat.S_ISREG(mode):
                self._entry(relative, mode=mode, data=path.read_bytes())
            elif stat.S_ISDIR(mode):
                self._entry(relative, mode=mode)
            else:
                raise ValueError(f"{path}: only files, directories and symlinks are packed")
            count += 1
        return count

    def add_device(self, node: DeviceNode) -> None:
        self._entry(node.path, mode=node.mode, rdev=(node.major, node.minor))

    def finish(self) -> None:
        self._inode = -1
        self._entry(_TRAILER, mode=0)


def _walk(root: Path) -> Iterator[str]:
    for directory, subdirectories, files in os.walk(root):
        base = Path(directory).relative_to(root)
        for name in subdirectories + files:
            yield str(base / name) if str(base) != "." else name
