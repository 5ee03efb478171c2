"""Files other than images (the Kiln kernel and ramdisk, factory configuration) downloaded
to disk verified and resumable, the way images are.

`download_verified` writes to `DEST.partial` straight from the source (never the whole file
in memory), resumes an earlier partial copy (its bytes are hashed again, not trusted), checks
size and sha256 before the rename, and afterwards reads what landed back from the disk (the
page cache dropped first) and hashes it again: a verified stream is not a verified file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kiln.errors import KilnError
from kiln.fsutil import fsync_directory
from kiln.image.source import ByteSource
from kiln.progress import Progress

BLOCK = 4 * 1024 * 1024


class DownloadError(KilnError):
    pass


def partial_path(destination: Path) -> Path:
    return destination.with_name(destination.name + ".partial")


def hash_file(path: Path, *, limit: int | None = None) -> str:
    """The sha256 of a file as the disk holds it: its cached pages are dropped first."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        remaining = limit
        while remaining is None or remaining > 0:
            block = handle.read(BLOCK if remaining is None else min(BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest.hexdigest()


def _resume(partial: Path, size: int) -> tuple[int, hashlib._Hash]:
    """How much of an earlier partial copy to keep, and the hash of those bytes."""
    digest = hashlib.sha256()
    try:
        kept = partial.stat().st_size
    except FileNotFoundError:
        return 0, digest
    if kept > size:
        partial.unlink()
        return 0, digest
    with partial.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return kept, digest


def download_verified(source: ByteSource, destination: Path, *, sha256: str, size: int,
                      progress: Progress | None = None) -> Path:
    """Copy `size` bytes whose sha256 is `sha256` from `source` to `destination`."""
    if destination.is_file() and destination.stat().st_size == size \
            and hash_file(destination) == sha256:
        return destination  # already there (a re-run of manufacture)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(destination)
    offered = source.size()
    if offered is not None and offered != size:
        raise DownloadError(f"{source.description} has {offered} bytes, not the expected {size}")
    offset, digest = _resume(partial, size)
    if progress is not None:
        progress.total = size
        progress.advance(offset)
    with partial.open("ab") as handle:
        while offset < size:
            block = source.read_exact(offset, min(BLOCK, size - offset))
            handle.write(block)
            digest.update(block)
            offset += len(block)
            if progress is not None:
                progress.advance(len(block))
        handle.flush()
        os.fsync(handle.fileno())
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise DownloadError(f"{source.description}: sha256 {digest.hexdigest()} is not the "
                            f"expected {sha256}; the copy was deleted")
    os.replace(partial, destination)
    fsync_directory(destination.parent)
    landed = hash_file(destination)
    if landed != sha256:
        destination.unlink()
        raise DownloadError(f"{destination}: what landed on the disk hashes to {landed}, not "
                            f"{sha256}; the copy was deleted")
    return destination
