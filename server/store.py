"""The content-addressed blob store: every uploaded image and boot file, once, by sha256.

    store/sha256/ab/abcdef…         the bytes (named by their sha256)
    store/sha256/ab/abcdef….json    {"sha1", "md5", "size"}: the other digests
    store/tmp/                      uploads being received (removed at start: a crash's leftovers)
    store/.lock                     held while a blob is published or unreferenced

An upload streams into a temporary file while sha256, sha1 and md5 are computed (never the
whole file in memory), is fsync'd, and only then renamed into place: a reader sees a complete
blob or none. An identical blob already stored is kept and the new copy dropped.

sha1 and md5 (hawkBit's DDI announces all three hashes of an artifact) are computed during the
upload at no extra read and kept in the `.json` sidecar next to the blob, so the database
tables need no columns for them; `digests()` recomputes a missing sidecar.

Which blobs are still wanted is the database's business (rows in `images` and `files` name
them by sha256). Publishing a blob and deleting one that no row references both happen under
`lock()` (an exclusive `flock` shared by every worker process), so a blob that a concurrent
upload just published is never removed from under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from kiln.errors import KilnError
from kiln.fsutil import fsync_directory
from kiln.resource import Closing

READ_BLOCK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(KilnError):
    """The store cannot take or give a blob."""


class BlobTooLargeError(StoreError):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"the upload is larger than the limit of {limit} bytes")


@dataclass(frozen=True)
class BlobDigests:
    sha256: str
    sha1: str
    md5: str
    size: int


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    path: Path
    sha1: str
    md5: str


class BlobWriter(Closing):
    """One upload on its way into the store: `write`, `finish`, then `commit` (or `close`,
    which discards whatever was not committed)."""

    def __init__(self, store: BlobStore, *, max_bytes: int):
        self._store = store
        self._max_bytes = max_bytes
        descriptor, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._handle: BinaryIO | None = os.fdopen(descriptor, "wb")
        self._hashes = (hashlib.sha256(), hashlib.sha1(), hashlib.md5())  # noqa: S324
        self.size = 0
        self._digests: BlobDigests | None = None
        self._committed = False
        self.created = False  # whether commit() put a new blob in place (none was there)

    def write(self, data: bytes) -> None:
        if self._handle is None:
            raise StoreError("the upload is already finished")
        if self.size + len(data) > self._max_bytes:
            raise BlobTooLargeError(self._max_bytes)
        self._handle.write(data)
        for digest in self._hashes:
            digest.update(data)
        self.size += len(data)

    def finish(self) -> BlobDigests:
        """Flush the received bytes to disk; the temporary file is complete and readable."""
        if self._digests is None:
            assert self._handle is not None
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
            sha256, sha1, md5 = (digest.hexdigest() for digest in self._hashes)
            self._digests = BlobDigests(sha256=sha256, sha1=sha1, md5=md5, size=self.size)
        return self._digests

    def commit(self) -> StoredBlob:
        """Move the upload into place under its sha256 (keeping an identical blob there)."""
        digests = self.finish()
        if self._committed:
            raise StoreError("the upload is already committed")
        self._committed = True
        target = self._store.path_of(digests.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            self.path.unlink()
            self._store.ensure_sidecar(digests)
        else:
            self._store.write_sidecar(digests)
            os.chmod(self.path, 0o644)
            os.replace(self.path, target)
            fsync_directory(target.parent)
            self.created = True
        return StoredBlob(sha256=digests.sha256, size=digests.size, path=target,
                          sha1=digests.sha1, md5=digests.md5)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if not self._committed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class BlobStore:
    """Blobs under `root`; a value without state of its own (make one wherever needed)."""

    def __init__(self, root: Path):
        self.root = root
        self.tmp_dir = root / "tmp"
        self.objects_dir = root / "sha256"

    def clean(self) -> int:
        """Make the directories and remove the temporary files a crash left; how many."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed

    def writer(self, *, max_bytes: int) -> BlobWriter:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return BlobWriter(self, max_bytes=max_bytes)

    def receive(self, source: Iterable[bytes] | BinaryIO, *, max_bytes: int) -> StoredBlob:
        """Store everything `source` yields (chunks, or a file read block by block)."""
        with self.writer(max_bytes=max_bytes) as writer:
            for chunk in _chunks_of(source):
                writer.write(chunk)
            return writer.commit()

    def path_of(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.objects_dir / sha256[:2] / sha256

    def _sidecar_of(self, sha256: str) -> Path:
        path = self.path_of(sha256)
        return path.with_name(path.name + ".json")

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def write_sidecar(self, digests: BlobDigests) -> None:
        target = self._sidecar_of(digests.sha256)
        text = json.dumps({"sha1": digests.sha1, "md5": digests.md5, "size": digests.size})
        descriptor, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="digests-")
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(name, 0o644)
            os.replace(name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise

    def ensure_sidecar(self, digests: BlobDigests) -> None:
        if not self._sidecar_of(digests.sha256).is_file():
            self.write_sidecar(digests)

    def digests(self, sha256: str) -> BlobDigests:
        """sha1, md5 and size of a stored blob (from its sidecar, recomputed if that is gone)."""
        try:
            saved = json.loads(self._sidecar_of(sha256).read_text())
            return BlobDigests(sha256=sha256, sha1=saved["sha1"], md5=saved["md5"],
                               size=saved["size"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        hashes = (hashlib.sha1(), hashlib.md5())  # noqa: S324
        size = 0
        try:
            with self.path_of(sha256).open("rb") as handle:
                while block := handle.read(READ_BLOCK):
                    size += len(block)
                    for digest in hashes:
                        digest.update(block)
        except FileNotFoundError as e:
            raise StoreError(f"blob {sha256} is not in the store") from e
        digests = BlobDigests(sha256=sha256, sha1=hashes[0].hexdigest(),
                              md5=hashes[1].hexdigest(), size=size)
        self.write_sidecar(digests)
        return digests

    def remove(self, sha256: str) -> bool:
        """Delete a blob (call under `lock()`, once no row names it); whether it was there."""
        path = self.path_of(sha256)
        with contextlib.suppress(FileNotFoundError):
            self._sidecar_of(sha256).unlink()
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_directory(path.parent)
        return True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across threads and worker processes: publishing and unreferencing."""
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock


def _chunks_of(source: Iterable[bytes] | BinaryIO) -> Iterator[bytes]:
    if hasattr(source, "read"):
        handle = cast(BinaryIO, source)
        while block := handle.read(READ_BLOCK):
            yield block
    else:
        yield from source
