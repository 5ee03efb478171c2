"""Just enough of ELF to list the shared libraries a binary needs (DT_NEEDED, RUNPATH).

The ramdisk builder uses it to prove every program and extension module in the ramdisk finds
its libraries, without running anything from the ramdisk.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_RPATH = 15
_DT_RUNPATH = 29
_PT_DYNAMIC = 2
_PT_LOAD = 1


@dataclass(frozen=True)
class ElfDeps:
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def read_deps(path: Path) -> ElfDeps | None:
    """DT_NEEDED and RUNPATH/RPATH of a 64-bit little-endian ELF; None for static files."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    for index in range(phnum):
        kind, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + index * phentsize
        )
        if kind == _PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif kind == _PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        return None
    entries: list[tuple[int, int]] = []
    for position in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, position)
        if tag == 0:
            break
        entries.append((tag, value))
    strtab_address = next(value for tag, value in entries if tag == _DT_STRTAB)
    strtab = next(
        offset + strtab_address - vaddr for vaddr, offset, size in loads
        if vaddr <= strtab_address < vaddr + size
    )

    def string(offset: int) -> str:
        end = data.index(b"\x00", strtab + offset)
        return data[strtab + offset:end].decode()

    needed = tuple(string(value) for tag, value in entries if tag == _DT_NEEDED)
    runpath: list[str] = []
    for tag, value in entries:
        if tag in (_DT_RUNPATH, _DT_RPATH):
            runpath.extend(string(value).split(":"))
    return ElfDeps(needed=needed, runpath=tuple(runpath))
