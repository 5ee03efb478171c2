"""Build a signed `.upd` image from a root filesystem tree.

GNU tar writes the payload (POSIX format, sorted names, numeric owners, extended attributes
and ACLs, no atime/ctime: the same tree gives the same bytes); the payload is cut into frames
of `frame_size` bytes which a thread pool compresses in parallel; then the envelope is signed
and written in front of the frames, and the file appears under its final name only when it
is complete and on disk.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from kiln.fsutil import fsync_directory
from kiln.image.envelope import encode_envelope
from kiln.image.errors import ImageError
from kiln.image.manifest import (
    DEFAULT_FRAME_SIZE,
    Compression,
    Frame,
    Manifest,
    PayloadKind,
    parse_manifest,
)
from kiln.image.signing import SigningKey
from kiln.process import spawn
from kiln.progress import Progress

DEFAULT_LEVEL = 3

TAR_CREATE = (
    "tar", "--create", "--file=-", "--format=posix", "--numeric-owner", "--sort=name",
    "--xattrs", "--xattrs-include=*", "--acls",
    "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
)


@dataclass(frozen=True)
class ImageSpec:
    """What the builder is asked to make."""

    product: str
    version: str
    build: int
    variants: tuple[str, ...]
    description: str = ""
    frame_size: int = DEFAULT_FRAME_SIZE
    level: int = DEFAULT_LEVEL
    threads: int = 0  # 0: one per CPU
    created: str | None = None  # default: SOURCE_DATE_EPOCH, else now


def _created(spec: ImageSpec) -> str:
    if spec.created:
        return spec.created
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        data = stream.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _compressed_frames(
    chunks: Iterator[bytes], *, level: int, threads: int
) -> Iterator[tuple[bytes, str, int]]:
    """(compressed frame, its sha256, uncompressed size), in order, compressed in parallel."""
    local = threading.local()

    def compress(data: bytes) -> tuple[bytes, str, int]:
        compressor = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = zstandard.ZstdCompressor(
                level=level, write_checksum=False, write_content_size=True
            )
        frame = compressor.compress(data)
        return frame, hashlib.sha256(frame).hexdigest(), len(data)

    workers = threads or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers, "kiln-compress") as pool:
        pending: deque[concurrent.futures.Future[tuple[bytes, str, int]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(compress, chunk))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def build_payload_frames(
    rootfs: Path, payload: IO[bytes], *, spec: ImageSpec, progress: Progress | None = None
) -> tuple[list[Frame], int]:
    """Write the compressed frames of `rootfs`'s tar stream to `payload`."""
    frames: list[Frame] = []
    total = 0
    with spawn([*TAR_CREATE, f"--directory={rootfs}", "."], stdout_pipe=True) as tar:

        def chunks() -> Iterator[bytes]:
            while chunk := _read_exactly(tar.stdout, spec.frame_size):
                yield chunk

        offset = 0
        for frame, digest, size in _compressed_frames(
            chunks(), level=spec.level, threads=spec.threads
        ):
            payload.write(frame)
            frames.append(Frame(offset=offset, length=len(frame), sha256=digest))
            offset += len(frame)
            total += size
            if progress:
                progress.advance(size)
        tar.wait()
    return frames, total


def build_image(
    rootfs: Path, out: Path, *, spec: ImageSpec, keys: Sequence[SigningKey],
    progress: Progress | None = None,
) -> Manifest:
    """Build `out` from `rootfs`, signed by every key in `keys`."""
    if not rootfs.is_dir():
        raise ImageError(f"{rootfs} is not a directory")
    if not keys:
        raise ImageError("an image needs at least one signing key")
    out = out.absolute()
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    payload_path = out.with_name(f".{out.name}.payload-{os.getpid()}")
    try:
        with payload_path.open("w+b") as payload:
            frames, payload_size = build_payload_frames(
                rootfs, payload, spec=spec, progress=progress
            )
            manifest = Manifest(
                product=spec.product, version=spec.version, build=spec.build,
                created=_created(spec), variants=spec.variants,
                payload_kind=PayloadKind.ROOTFS_TAR, compression=Compression.ZSTD,
                payload_size=payload_size, frame_size=spec.frame_size, frames=tuple(frames),
                description=spec.description,
            )
            # Whatever we sign must be what readers accept.
            parse_manifest(manifest.canonical_text())
            envelope = encode_envelope(manifest, list(keys))
            with partial.open("wb") as handle:
                handle.write(envelope)
                handle.flush()
                _copy(payload, handle, manifest.compressed_size)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(partial, out)
        fsync_directory(out.parent)
    finally:
        for path in (partial, payload_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return manifest


def _copy(source: IO[bytes], target: IO[bytes], size: int) -> None:
    """Copy `size` bytes in the kernel where it can (no trip through user space)."""
    source.seek(0)
    copied = 0
    target_offset = target.tell()
    try:
        while copied < size:
            step = os.copy_file_range(
                source.fileno(), target.fileno(), size - copied, 0 + copied,
                target_offset + copied,
            )
            if not step:
                break
            copied += step
    except OSError:
        copied = 0
        target.seek(target_offset)
        target.truncate()
    if copied == size:
        target.seek(target_offset + size)
        return
    source.seek(0)
    target.seek(target_offset)
    while block := source.read(8 * 1024 * 1024):
        target.write(block)
