"""A reproducible `newc` cpio writer: the format Linux unpacks as an initramfs.

Written here rather than with cpio(1) so an archive depends only on what goes in: entries
in the order given (trees sorted), inode numbers assigned in order, every entry owned by
root, one timestamp for all. Device nodes are header fields, so no root is needed to make
them. Hard links are stored as separate files.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kiln.errors import KilnError

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class CpioError(KilnError):
    pass


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. `data` is a file's content or a symlink's target."""

    name: str  # inside the archive, without a leading slash
    mode: int  # st_mode: file type bits and permissions
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node

    @classmethod
    def directory(cls, name: str, permissions: int = 0o755) -> CpioEntry:
        return cls(name=name, mode=stat.S_IFDIR | permissions)

    @classmethod
    def file(cls, name: str, data: bytes, permissions: int = 0o644) -> CpioEntry:
        return cls(name=name, mode=stat.S_IFREG | permissions, data=data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name=name, mode=stat.S_IFLNK | 0o777, data=target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, permissions: int = 0o600
                    ) -> CpioEntry:
        return cls(name=name, mode=stat.S_IFCHR | permissions, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    """Streams entries to `out`; call `finish()` for the trailer."""

    def __init__(self, out: IO[bytes], *, mtime: int = 0):
        self.out = out
        self.mtime = mtime
        self._inode = 0
        self._written = 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self._written += len(data)

    def add(self, entry: CpioEntry, *, inode: int | None = None) -> None:
        if inode is None:
            self._inode += 1
            inode = self._inode
        name = entry.name.encode() + b"\0"
        fields = (
            inode, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, self.mtime,
            len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )
        header = _MAGIC + b"".join(b"%08x" % value for value in fields)
        self._write(header + name + _pad(len(header) + len(name)))
        self._write(entry.data + _pad(len(entry.data)))

    def add_tree(self, root: Path, *, prefix: str = "") -> int:
        """Add everything under `root` (not `root` itself), sorted; return the entry count."""
        count = 0
        for entry in tree_entries(root, prefix=prefix):
            self.add(entry)
            count += 1
        return count

    def finish(self) -> None:
        self.add(CpioEntry(name=_TRAILER, mode=0), inode=0)
        self._write(_pad(self._written))


def tree_entries(root: Path, *, prefix: str = "") -> Iterator[CpioEntry]:
    """Every file, directory and symlink under `root`, sorted, read one at a time."""
    base = prefix.rstrip("/") + "/" if prefix else ""
    for relative in sorted(_walk(root)):
        path = root / relative
        info = path.lstat()
        name = base + relative
        if stat.S_ISLNK(info.st_mode):
            yield CpioEntry.symlink(name, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            yield CpioEntry.directory(name, stat.S_IMODE(info.st_mode))
        elif stat.S_ISREG(info.st_mode):
            yield CpioEntry.file(name, path.read_bytes(), stat.S_IMODE(info.st_mode))
        else:
            raise CpioError(f"{path}: only files, directories and symlinks can be archived")


def newc_archive(entries: Iterable[CpioEntry], *, mtime: int = 0) -> bytes:
    """The entries as one archive in memory, in the order given (parents before children)."""
    buffer = io.BytesIO()
    writer = CpioWriter(buffer, mtime=mtime)
    for entry in entries:
        writer.add(entry)
    writer.finish()
    return buffer.getvalue()


def _walk(root: Path) -> Iterator[str]:
    for directory, subdirectories, files in os.walk(root):
        relative = Path(directory).relative_to(root)
        for name in subdirectories + files:
            yield name if str(relative) == "." else f"{relative}/{name}"
