"""Small test ramdisks: a busybox initramfs for testing the lab itself.

The archive comes from `kiln.cpio` (no root, no `cpio` program, the same bytes for the same
inputs). Kernel modules come from a Debian kernel tree with `modules.dep` (see
`initramfs.debian.fetch_kernel`); `kiln.kmod.module_closure` orders them for `insmod`.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path

import zstandard

from kiln.cpio import CpioEntry, newc_archive
from kiln.kmod import module_closure
from lab.errors import LabError


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


def compress(data: bytes, compression: Compression) -> bytes:
    match compression:
        case Compression.NONE:
            return data
        case Compression.GZIP:
            return gzip.compress(data, compresslevel=6, mtime=0)
        case Compression.ZSTD:
            return zstandard.ZstdCompressor(level=10).compress(data)


def write_initrd(
    entries: Iterable[CpioEntry], out: Path, *, compression: Compression = Compression.GZIP
) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(compress(newc_archive(entries), compression))
    return out


def busybox_initrd(
    *,
    busybox: Path,
    init_script: str,
    out: Path,
    modules_dir: Path | None = None,
    modules: Sequence[str] = (),
    compression: Compression = Compression.GZIP,
) -> Path:
    """A ramdisk with a static busybox, `/init` = `init_script` and, optionally, kernel modules
    copied to `/lib/modules/` with their load order in `/lib/modules/load-order` (one file
    name a line, for `insmod`). Applets are linked at run time (`busybox --install -s`)."""
    entries = [
        CpioEntry.directory("bin"),
        CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755),
        CpioEntry.symlink("bin/sh", "busybox"),
        CpioEntry.directory("dev"),
        CpioEntry.char_device("dev/console", 5, 1),
        CpioEntry.char_device("dev/null", 1, 3, 0o666),
        CpioEntry.directory("lib"),
        CpioEntry.directory("lib/modules"),
        CpioEntry.directory("proc"),
        CpioEntry.directory("sbin"),
        CpioEntry.directory("sys"),
        CpioEntry.directory("tmp", 0o1777),
        CpioEntry.file("init", init_script.encode(), 0o755),
    ]
    if modules:
        if modules_dir is None:
            raise LabError("modules were asked for but no modules_dir was given")
        order = module_closure(modules_dir, modules)
        names = [path.rsplit("/", 1)[-1] for path in order]
        entries += [
            CpioEntry.file(f"lib/modules/{name}", (modules_dir / path).read_bytes())
            for name, path in zip(names, order, strict=True)
        ]
        entries.append(CpioEntry.file("lib/modules/load-order", "".join(
            f"{name}\n" for name in names).encode()))
    return write_initrd(entries, out, compression=compression)
