"""A streaming guard for tar archives: only members that stay inside DEST get through.

The guard reads the tar headers as the stream passes and releases bytes to the extracting
program only once the header of the member they belong to has been checked. It refuses, naming
the member: absolute paths, `..` components, paths through a symlink (one made earlier in the
archive or one already in DEST), hard links that point outside, member types that could make
the stream mean something else to the extractor (sparse, multi-volume, vendor types), corrupt
headers and an archive that ends early. Bulk data passes through without copies.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from kiln.image.errors import UnsafeArchiveError

BLOCK = 512
MAX_META_SIZE = 1024 * 1024
MAX_NUMBER = 2**63 - 1  # GNU tar's off_t
_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(r"[0-9]+")
_DIGITS = re.compile(rb"[0-9]+")
_DATA_TYPES = frozenset(b"07\x00")  # regular (new, contiguous, old style)
_NO_DATA_TYPES = frozenset(b"123456")  # hard link, symlink, char, block, directory, fifo
_META_TYPES = frozenset(b"xgLK")
_KIND_NAMES = {
    ord("0"): "file", 0: "file", ord("7"): "file", ord("1"): "hard link", ord("2"): "symlink",
    ord("3"): "character device", ord("4"): "block device", ord("5"): "directory",
    ord("6"): "fifo",
}


@dataclass(frozen=True)
class Member:
    name: str  # normalized: no leading "./" or "/", no trailing "/"; "" is DEST itself
    kind: str
    size: int
    linkname: str


def _pad(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _number(field: bytes, what: str) -> int:
    """A numeric header field, read exactly as GNU tar reads it or refused.

    Any other reading (Python's `int` also takes "+", "_" and "0o"; GNU tar reads "+…" as
    base-64 and skips a header whose size it cannot read) would let the guard and tar disagree
    on where the next header starts.
    """
    if field and field[0] in (0x80, 0xFF):  # GNU base-256
        if field[0] == 0xFF:
            raise UnsafeArchiveError(f"negative {what} in a tar header")
        value = int.from_bytes(field[1:], "big")
    else:
        text = field.split(b"\x00", 1)[0].strip(b" ")
        if not text:
            return 0
        if not _OCTAL.fullmatch(text):
            raise UnsafeArchiveError(f"corrupt {what} {text!r} in a tar header")
        value = int(text, 8)
    if value > MAX_NUMBER:
        raise UnsafeArchiveError(f"{what} {value} in a tar header is out of range")
    return value


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored == unsigned:  # what every modern tar writes: skip the slower signed sum
        return True
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    return stored == signed


def _pax_records(data: bytes) -> dict[str, str]:
    """The records of a pax header, each exactly "LENGTH KEY=VALUE\\n" or refused.

    GNU tar stops reading a header at the first record it cannot parse and keeps what the
    ustar header says, so any record read differently here would check a name tar never uses.
    """
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        digits = data[position:space] if space > position else b""
        end = position + int(digits) if _DIGITS.fullmatch(digits) else -1
        if end > len(data) or end <= space + 1 or data[end - 1:end] != b"\n":
            raise UnsafeArchiveError("corrupt pax extended header")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals or not key or key[:1] in b" \t" or b"\x00" in key:
            raise UnsafeArchiveError("corrupt pax extended header")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position = end
    return records


class TarGuard:
    """Feed it the payload chunk by chunk; write what `feed` returns to the extractor."""

    def __init__(self, dest: Path | None = None):
        self._dest = dest
        self._block = bytearray()  # a header block being assembled
        self._carry = bytearray()  # held bytes of a header group begun in an earlier chunk
        self._data_left = 0  # released member data still to pass (padded)
        self._meta_left = 0  # data of a pax/long-name record still to collect (padded)
        self._meta_type = 0
        self._meta_size = 0
        self._meta = bytearray()
        self._pax: dict[str, str] = {}
        self._global_pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._symlinks: set[str] = set()
        self._checked_dirs: set[str] = set()
        self._header_offset = 0
        self._offset = 0  # stream offset of the start of the current chunk
        self.ended = False
        self.members = 0

    def feed(self, chunk: bytes | memoryview) -> list[bytes | memoryview]:
        """Check `chunk`; return the pieces that are now safe to pass on, in order."""
        view = memoryview(chunk)
        size = len(view)
        position = 0
        released: list[bytes | memoryview] = []
        group_start: int | None = 0 if self._carry else None
        while position < size and not self.ended:
            if self._data_left:
                step = min(self._data_left, size - position)
                self._data_left -= step
                position += step
            elif self._meta_left:
                step = min(self._meta_left, size - position)
                self._meta += view[position:position + step]
                self._meta_left -= step
                position += step
                if not self._meta_left:
                    self._finish_meta()
            else:
                if group_start is None:
                    group_start = position
                if not self._block:
                    self._header_offset = self._offset + position
                step = min(BLOCK - len(self._block), size - position)
                self._block += view[position:position + step]
                position += step
                if len(self._block) == BLOCK:
                    block = bytes(self._block)
                    self._block.clear()
                    if self._header(block):
                        if self._carry:
                            released.append(bytes(self._carry))
                            self._carry.clear()
                        group_start = None
        if group_start is None:
            released.append(view)
        else:
            if group_start:
                released.append(view[:group_start])
            self._carry += view[group_start:]
        self._offset += size
        return [piece for piece in released if len(piece)]

    def finish(self) -> None:
        """Call at the end of the stream: it must have ended cleanly."""
        if not self.ended:
            raise UnsafeArchiveError(
                f"the archive ends at byte {self._offset} without its end-of-archive marker "
                "(truncated payload?)"
            )

    def _header(self, block: bytes) -> bool:
        """Handle one header block; True when everything held so far may be released."""
        if not any(block):
            if self._meta_type or self._pax or self._long_name or self._long_link:
                raise UnsafeArchiveError(
                    f"extended header at byte {self._header_offset} is followed by the end marker"
                )
            self.ended = True
            return True
        if not _checksum_ok(block):
            raise UnsafeArchiveError(f"corrupt tar header at byte {self._header_offset}")
        kind = block[156]
        size = _number(block[124:136], "size")
        if kind in _META_TYPES:
            if size > MAX_META_SIZE:
                raise UnsafeArchiveError(
                    f"extended header of {size} bytes at byte {self._header_offset} is too large"
                )
            self._meta_type, self._meta_size, self._meta_left = kind, size, _pad(size)
            self._meta.clear()
            if not size:
                self._finish_meta()
            return False
        member = self._member(block, kind, size)
        self._check(member, kind)
        self._pax, self._long_name, self._long_link = {}, None, None
        self.members += 1
        self._data_left = _pad(member.size) if member.kind == "file" else 0
        return True

    def _finish_meta(self) -> None:
        data = bytes(self._meta[: self._meta_size])
        kind, self._meta_type = self._meta_type, 0
        # Like GNU tar: a later header replaces an earlier one of its kind, records and all.
        if kind == ord("x"):
            self._pax = _pax_records(data)
        elif kind == ord("g"):
            self._global_pax = _pax_records(data)
        elif kind == ord("L"):
            self._long_name = _text(data)
        else:
            self._long_link = _text(data)

    def _member(self, block: bytes, kind: int, size: int) -> Member:
        pax = {**self._global_pax, **self._pax}
        name = _text(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345] and not self._long_name:
            name = _text(block[345:500]) + "/" + name
        name = pax.get("path", self._long_name or name)
        linkname = pax.get("linkpath", self._long_link or _text(block[157:257]))
        if "size" in pax:
            # GNU tar ignores a size record that is not plain decimal digits; refuse it instead
            if not _DECIMAL.fullmatch(pax["size"]) or int(pax["size"]) > MAX_NUMBER:
                raise UnsafeArchiveError(f"member {name!r}: corrupt pax size {pax['size']!r}")
            size = int(pax["size"])
        if kind in _DATA_TYPES and name.endswith("/"):
            # GNU tar extracts a regular member named "x/" as a directory and reads no data
            # for it: the bytes that follow are its next header.
            kind = ord("5")
        if kind not in _KIND_NAMES:
            raise UnsafeArchiveError(
                f"member {name!r}: unsupported tar member type {chr(kind)!r}"
            )
        if any(key.startswith("GNU.sparse.") for key in pax):
            raise UnsafeArchiveError(f"member {name!r}: sparse members are not supported")
        if kind in _NO_DATA_TYPES and size:
            raise UnsafeArchiveError(
                f"member {name!r}: a {_KIND_NAMES[kind]} must not carry {size} bytes of data"
            )
        return Member(
            name=self._normalize(name, name), kind=_KIND_NAMES[kind], size=size,
            linkname=linkname,
        )

    def _normalize(self, path: str, member: str) -> str:
        if "\x00" in path or not path:
            raise UnsafeArchiveError(f"member {member!r}: empty or NUL in a path")
        if path.startswith("/"):
            raise UnsafeArchiveError(f"refusing member {member!r}: absolute path {path!r}")
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise UnsafeArchiveError(f"refusing member {member!r}: '..' in path {path!r}")
        return "/".join(parts)

    def _check(self, member: Member, kind: int) -> None:
        if not member.name and member.kind != "directory":
            raise UnsafeArchiveError(f"refusing a {member.kind} as the archive root")
        self._check_parents(member.name, member.name)
        if member.kind == "hard link":
            target = self._normalize(member.linkname, member.name)
            if not target:
                raise UnsafeArchiveError(f"refusing member {member.name!r}: hard link to DEST")
            self._check_parents(target, member.name)
            if target in self._symlinks or self._is_dest_symlink(target):
                self._symlinks.add(member.name)  # a hard link to a symlink is a symlink
        if member.kind == "symlink":
            self._symlinks.add(member.name)

    def _is_dest_symlink(self, path: str) -> bool:
        if self._dest is None:
            return False
        try:
            return stat.S_ISLNK(os.lstat(self._dest / path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def _check_parents(self, path: str, member: str) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self._symlinks:
                raise UnsafeArchiveError(
                    f"refusing member {member!r}: it goes through {parent!r}, a symlink earlier "
                    "in the archive"
                )
            if parent in self._checked_dirs:
                continue
            if self._dest is not None:
                try:
                    mode = os.lstat(self._dest / parent).st_mode
                except (FileNotFoundError, NotADirectoryError):
                    mode = stat.S_IFDIR  # tar will make it (or fail on it)
                if stat.S_ISLNK(mode):
                    raise UnsafeArchiveError(
                        f"refusing member {member!r}: {parent!r} is a symlink already in "
                        f"{self._dest}"
                    )
            self._checked_dirs.add(parent)
