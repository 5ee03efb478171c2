"""Canaries: blocks of known, unique content written before an erase and read back after it,
both with O_DIRECT (no page cache in the way) and flushed to the medium. An erase is verified
only when none survives.

Placement covers the whole region: its first and last block, evenly spaced blocks between,
and a few more at offsets drawn from the run id (so two runs do not pick the same blocks).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK_BYTES = 4096  # a multiple of every logical sector size in use (512, 4096)
SPREAD = 8  # evenly spaced canaries, first and last included
DRAWN = 4  # more at drawn offsets
SECTOR = 512


@dataclass(frozen=True, kw_only=True)
class Canaries:
    node: Path
    run_id: str  # makes every block unique to this erase
    offsets: tuple[int, ...]

    def block(self, offset: int) -> bytes:
        head = f"KILN-ERASE-CANARY {self.run_id} @{offset}\n".encode()
        seed = hashlib.sha256(head).digest()
        body = (seed * (BLOCK_BYTES // len(seed) + 1))[:BLOCK_BYTES - len(head)]
        return head + body


def place(node: Path, *, size_bytes: int, run_id: str) -> Canaries:
    blocks = size_bytes // BLOCK_BYTES
    if blocks < 1:
        return Canaries(node=node, run_id=run_id, offsets=())
    spread = {round(i * (blocks - 1) / (SPREAD - 1)) for i in range(SPREAD)}
    drawn = {random.Random(f"{run_id}:{node}").randrange(blocks) for _ in range(DRAWN)}  # noqa: S311
    return Canaries(node=node, run_id=run_id,
                    offsets=tuple(sorted(b * BLOCK_BYTES for b in spread | drawn)))


@contextlib.contextmanager
def _direct(node: Path, flags: int) -> Iterator[int]:
    fd = os.open(node, flags | os.O_DIRECT | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _aligned(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size)  # page aligned, as O_DIRECT wants


def write(canaries: Canaries) -> None:
    buffer = _aligned(BLOCK_BYTES)
    with _direct(canaries.node, os.O_WRONLY) as fd:
        for offset in canaries.offsets:
            buffer.seek(0)
            buffer.write(canaries.block(offset))
            if os.pwritev(fd, [buffer], offset) != BLOCK_BYTES:
                raise OSError(f"{canaries.node}: short canary write at {offset}")
        os.fsync(fd)


def surviving(canaries: Canaries) -> tuple[int, ...]:
    """The offsets whose canary is still there, even in part: a block survives when any of
    its 512-byte sectors does (read past every cache)."""
    buffer = _aligned(BLOCK_BYTES)
    found: list[int] = []
    with _direct(canaries.node, os.O_RDONLY) as fd:
        for offset in canaries.offsets:
            if os.preadv(fd, [buffer], offset) != BLOCK_BYTES:
                raise OSError(f"{canaries.node}: short canary read at {offset}")
            expected = canaries.block(offset)
            if any(buffer[at:at + SECTOR] == expected[at:at + SECTOR]
                   for at in range(0, BLOCK_BYTES, SECTOR)):
                found.append(offset)
    return tuple(found)
