"""Extract a `rootfs-tar` image into a directory, verifying as it goes.

Three stages overlap: a thread reads, checks and decompresses frames; this thread checks tar
headers (`TarGuard`) and passes safe bytes on; GNU tar writes the files, keeping owners (by
number: a ramdisk has no user database), modes, timestamps, links, device nodes, ACLs and
extended attributes. Nothing from a frame reaches tar before the frame's sha256 matched, and
nothing of a member before its header was found safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kiln.image.errors import ImageError
from kiln.image.manifest import PayloadKind
from kiln.image.pipeline import prefetch
from kiln.image.reader import ImageReader
from kiln.image.targuard import TarGuard
from kiln.process import CommandError, spawn
from kiln.progress import Progress

PIPE_SIZE = 1024 * 1024
SLICE_SIZE = 1024 * 1024
PREFETCH_SLICES = 32
Piece = bytes | memoryview
TAR_EXTRACT = (
    "tar", "--extract", "--file=-", "--numeric-owner", "--preserve-permissions",
    "--xattrs", "--xattrs-include=*", "--acls", "--delay-directory-restore",
)


@dataclass(frozen=True)
class ExtractResult:
    members: int
    payload_bytes: int


def tar_extract_argv(dest: Path) -> list[str]:
    same_owner = ["--same-owner"] if os.geteuid() == 0 else ["--no-same-owner"]
    return [*TAR_EXTRACT, *same_owner, f"--directory={dest}"]


def extract(reader: ImageReader, dest: Path, *, progress: Progress | None = None) -> ExtractResult:
    """Extract the image's payload into `dest`, which must be an existing directory."""
    if reader.manifest.payload_kind is not PayloadKind.ROOTFS_TAR:
        raise ImageError(
            f"cannot extract a {reader.manifest.payload_kind} payload into a directory"
        )
    if not dest.is_dir():
        raise ImageError(f"{dest} is not a directory")
    guard = TarGuard(dest)
    written = 0
    with spawn(tar_extract_argv(dest), stdin_pipe=True) as tar:
        _grow_pipe(tar.stdin)
        batches = prefetch(_checked(reader, guard), depth=PREFETCH_SLICES)
        try:
            for size, pieces in batches:
                for piece in pieces:
                    try:
                        tar.stdin.write(piece)
                    except BrokenPipeError:
                        tar.wait()  # raises with tar's own message
                        raise
                written += size
                if progress:
                    progress.advance(size)
        except BaseException:
            batches.close()
            raise
        try:
            tar.wait()
        except CommandError as e:
            raise ImageError(f"extracting into {dest} failed: {e}") from e
    return ExtractResult(members=guard.members, payload_bytes=written)


def _checked(reader: ImageReader, guard: TarGuard) -> Iterator[tuple[int, list[Piece]]]:
    """Verified, decompressed frames cut into the pieces the guard lets through.

    Runs in the prefetch thread, a slice at a time: tar starts on the first megabyte while
    the guard reads the next, and never waits for a whole frame to be checked.
    """
    for chunk in reader.payload():
        view = memoryview(chunk)
        for start in range(0, len(view), SLICE_SIZE):
            piece = view[start:start + SLICE_SIZE]
            yield len(piece), guard.feed(piece)
    guard.finish()


def _grow_pipe(stream: IO[bytes]) -> None:
    """A 1 MiB pipe (the unprivileged maximum) keeps tar fed between our writes."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
