"""The image store on RECOVERY: `Image/` holds signed images, `Image/quarantine/` bad ones.

Images are ordered by their signed manifest (version, then build), never by file name. New
images arrive through `add`, which copies only verified frames into `Image/.incoming/`,
resumes a partial copy at the last good frame, fsyncs, and renames the finished file into
place: a power cut leaves either no image or a whole one. An image that fails verification is
moved to quarantine with the reason beside it and is never considered again. `prune` keeps
the N newest usable images plus the factory image.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.fsutil import atomic_write_json, fsync_directory
from kiln.image.errors import (
    EnvelopeError,
    FrameError,
    ImageError,
    ManifestError,
    SignatureError,
    UntrustedKeyError,
)
from kiln.image.manifest import Manifest, sorted_newest_first
from kiln.image.reader import ImageReader
from kiln.image.signing import TrustStore
from kiln.image.source import ByteSource, FileSource, RetryPolicy
from kiln.progress import Progress, format_bytes
from recovery.history import DEFAULT_FAILURE_LIMIT, ImageHistory
from recovery.layout import RecoveryLayout

log = logging.getLogger(__name__)

IMAGE_SUFFIX = ".upd"


class StoreError(KilnError):
    pass


class NoGoodImageError(StoreError):
    """No image in the store can be used; `reasons` says why for each one."""

    def __init__(self, reasons: list[str]):
        self.reasons = tuple(reasons)
        detail = "\n  ".join(reasons) if reasons else "the store holds no images"
        super().__init__(f"no usable image on RECOVERY:\n  {detail}")


class StoreFullError(StoreError):
    pass


@dataclass(frozen=True)
class StoredImage:
    path: Path
    image_id: str
    key_id: str
    manifest: Manifest

    @property
    def label(self) -> str:
        return self.manifest.label


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str
    untrusted: bool  # signed, but by no key this store trusts


@dataclass(frozen=True)
class PruneResult:
    kept: tuple[StoredImage, ...]
    removed: tuple[StoredImage, ...]
    removed_quarantine: tuple[Path, ...]


def image_file_name(manifest: Manifest, image_id: str) -> str:
    return f"{manifest.product}-{manifest.version}-b{manifest.build}-{image_id[:12]}{IMAGE_SUFFIX}"


class ImageStore:
    """One RECOVERY volume's images. `root` is RECOVERY's mount point."""

    def __init__(
        self, root: Path, trust: TrustStore, *, failure_limit: int = DEFAULT_FAILURE_LIMIT,
        clock: Callable[[], float] = time.time,
    ):
        self.root = root
        self.layout = RecoveryLayout(root)
        self.trust = trust
        self.failure_limit = failure_limit
        self.image_dir = self.layout.images
        self.quarantine_dir = self.layout.quarantine
        self.incoming_dir = self.image_dir / ".incoming"
        self.history = ImageHistory(self.layout.state / "image-history.json", clock=clock)
        self._clock = clock

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise changes between the OS's agent and anything else touching the store."""
        self.layout.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.state / ".store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # Reading -----------------------------------------------------------------------------

    def scan(self) -> tuple[list[StoredImage], list[Skipped]]:
        """Every image whose signature checks, newest first, and what was skipped and why.

        Reading a manifest costs one small read per image; frames are not checked here.
        """
        images: list[StoredImage] = []
        skipped: list[Skipped] = []
        if not self.image_dir.is_dir():
            return images, skipped
        for path in sorted(self.image_dir.glob(f"*{IMAGE_SUFFIX}")):
            try:
                with ImageReader(FileSource(path), self.trust) as reader:
                    images.append(StoredImage(
                        path=path, image_id=reader.image_id, key_id=reader.key_id,
                        manifest=reader.manifest,
                    ))
            except ImageError as e:
                untrusted = isinstance(e, UntrustedKeyError)
                skipped.append(Skipped(path=path, reason=str(e), untrusted=untrusted))
        return sorted_newest_first(images, lambda image: image.manifest), skipped

    def images(self) -> list[StoredImage]:
        """Usable-looking images, newest first; broken envelopes are quarantined on sight.

        Images signed only by keys this store does not trust are left alone (a missing key is
        a configuration problem, not a bad image), but reported in the log.
        """
        images, skipped = self.scan()
        for entry in skipped:
            if entry.untrusted:
                log.warning("%s: %s", entry.path.name, entry.reason)
                continue
            self._quarantine_path(entry.path, entry.reason)
        return images

    def verify(self, image: StoredImage, *, progress: Progress | None = None) -> None:
        with ImageReader(FileSource(image.path), self.trust) as reader:
            if reader.image_id != image.image_id:
                raise StoreError(f"{image.path} changed since it was listed")
            reader.verify(progress=progress)

    def pick(self, *, variant: str | None = None, verify: bool = True,
             prefer: str | None = None) -> StoredImage:
        """The newest image that fits `variant`, is not abandoned, and (if asked) verifies;
        with `prefer`, that image first when it qualifies (an update names its image).

        An image that fails verification is quarantined and the next older one is tried.
        """
        reasons: list[str] = []
        records = self.history.records()
        found = self.images()
        if prefer is not None:
            found.sort(key=lambda image: image.image_id != prefer)  # stable: newest after it
            if not found or found[0].image_id != prefer:
                reasons.append(f"image {prefer[:12]}… was asked for but is not on RECOVERY")
                log.warning("%s", reasons[-1])
        for image in found:
            if variant is not None and not image.manifest.supports_variant(variant):
                reasons.append(f"{image.label}: not for variant {variant!r}")
                continue
            record = records.get(image.image_id)
            if record and record.failures_counting_open() >= self.failure_limit:
                reasons.append(
                    f"{image.label}: abandoned after {record.failures_counting_open()} "
                    f"consecutive failed attempts ({record.last_reason or 'no reason recorded'})"
                )
                continue
            if verify:
                try:
                    self.verify(image)
                except ImageError as e:
                    self.quarantine(image, str(e))
                    reasons.append(f"{image.label}: quarantined: {e}")
                    continue
            return image
        raise NoGoodImageError(reasons)

    # Changing ----------------------------------------------------------------------------

    def add(
        self, location: str | Path | ByteSource, *, retry: RetryPolicy | None = None,
        progress: Progress | None = None,
    ) -> StoredImage:
        """Copy an image (a path, a URL, or an open source such as an authenticated
        `HttpSource`) into the store, frame by verified frame.

        A copy interrupted earlier (power cut, network loss) is resumed at its last good
        frame. Nothing appears under `Image/` until the whole image is on disk and verified.
        """
        with self.locked(), self._reader(location, retry) as reader:
            manifest = reader.manifest
            for image in self.scan()[0]:
                if image.image_id == reader.image_id:
                    log.info("%s is already in the store as %s", manifest.label, image.path.name)
                    return image
            self.incoming_dir.mkdir(parents=True, exist_ok=True)
            partial = self.incoming_dir / f"{reader.image_id}{IMAGE_SUFFIX}.partial"
            start = self._resume_point(partial, reader)
            already = reader.payload_offset + (
                manifest.frames[start].offset if start < len(manifest.frames) else
                manifest.compressed_size
            )
            self._ensure_space(reader.total_size - already)
            if progress:
                progress.total = manifest.compressed_size
                progress.advance(already - reader.payload_offset)
            with partial.open("r+b" if start else "wb") as handle:
                handle.truncate(already)
                handle.seek(0)
                if not start:
                    handle.write(reader.source.read_exact(0, reader.payload_offset))
                handle.seek(already)
                for frame in reader.frames(start=start):
                    handle.write(frame.data)
                    if progress:
                        progress.advance(len(frame.data))
                handle.flush()
                os.fsync(handle.fileno())
            with ImageReader(FileSource(partial), self.trust) as landed:
                landed.verify()  # what reached the disk, not what passed through memory
            final = self.image_dir / image_file_name(manifest, reader.image_id)
            os.replace(partial, final)
            fsync_directory(self.image_dir)
            log.info("added %s as %s", manifest.label, final.name)
            return StoredImage(
                path=final, image_id=reader.image_id, key_id=reader.key_id, manifest=manifest
            )

    def _reader(self, location: str | Path | ByteSource,
                 retry: RetryPolicy | None) -> ImageReader:
        if isinstance(location, str | Path):
            return ImageReader.open(location, self.trust, retry=retry)
        try:
            return ImageReader(location, self.trust)
        except BaseException:
            location.close()
            raise

    def _resume_point(self, partial: Path, reader: ImageReader) -> int:
        """How many leading frames of an earlier partial copy are intact (0: start over)."""
        if not partial.exists():
            return 0
        good = 0
        try:
            with ImageReader(FileSource(partial), self.trust) as previous:
                if previous.image_id != reader.image_id:
                    return 0
                for _ in previous.frames():
                    good += 1
        except (EnvelopeError, SignatureError, ManifestError, FrameError):
            pass
        if good:
            log.info("resuming %s at frame %d of %d", partial.name, good,
                     len(reader.manifest.frames))
        return good

    def _ensure_space(self, needed: int) -> None:
        stats = os.statvfs(self.image_dir)
        free = stats.f_bavail * stats.f_frsize
        if needed > free:
            raise StoreFullError(
                f"not enough space on RECOVERY for the image: need {format_bytes(needed)}, "
                f"{format_bytes(free)} free (prune older images first)"
            )

    def quarantine(self, image: StoredImage, reason: str) -> Path:
        with self.locked():
            return self._quarantine_path(image.path, reason)

    def _quarantine_path(self, path: Path, reason: str) -> Path:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / path.name
        if target.exists():
            target = self.quarantine_dir / f"{path.stem}-{int(self._clock())}{path.suffix}"
        atomic_write_json(
            target.with_name(target.name + ".reason.json"),
            {"image": path.name, "reason": reason, "time": self._clock()},
        )
        os.replace(path, target)
        fsync_directory(self.quarantine_dir)
        fsync_directory(path.parent)
        log.warning("quarantined %s: %s", path.name, reason)
        return target

    def set_factory_image(self, image: StoredImage) -> None:
        with self.locked():
            self.history.set_factory_image(image.image_id)

    def prune(self, *, keep: int = 2, keep_quarantined: int = 2) -> PruneResult:
        """Keep the `keep` newest usable images and the factory image; delete the rest.

        Also keep only the newest `keep_quarantined` quarantined images (for diagnosis).
        """
        if keep < 1:
            raise StoreError("prune must keep at least one image")
        with self.locked():
            factory = self.history.factory_image()
            records = self.history.records()
            kept: list[StoredImage] = []
            removed: list[StoredImage] = []
            usable = 0
            for image in self.images():
                record = records.get(image.image_id)
                abandoned = bool(
                    record and record.failures_counting_open() >= self.failure_limit
                )
                if image.image_id == factory or (not abandoned and usable < keep):
                    kept.append(image)
                    usable += 0 if abandoned else 1
                    continue
                image.path.unlink()
                removed.append(image)
            if removed:
                fsync_directory(self.image_dir)
                self.history.forget({image.image_id for image in removed})
            removed_quarantine = self._prune_quarantine(keep_quarantined)
        return PruneResult(tuple(kept), tuple(removed), tuple(removed_quarantine))

    def _prune_quarantine(self, keep: int) -> list[Path]:
        if not self.quarantine_dir.is_dir():
            return []
        quarantined = sorted(
            self.quarantine_dir.glob(f"*{IMAGE_SUFFIX}"), key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for path in quarantined[keep:]:
            path.unlink()
            with contextlib.suppress(FileNotFoundError):
                path.with_name(path.name + ".reason.json").unlink()
        if quarantined[keep:]:
            fsync_directory(self.quarantine_dir)
        return quarantined[keep:]

    def quarantined(self) -> list[tuple[Path, str]]:
        """Quarantined images and the reason each was set aside."""
        result: list[tuple[Path, str]] = []
        if not self.quarantine_dir.is_dir():
            return result
        for path in sorted(self.quarantine_dir.glob(f"*{IMAGE_SUFFIX}")):
            try:
                reason = json.loads(path.with_name(path.name + ".reason.json").read_text())
                result.append((path, str(reason.get("reason", ""))))
            except (OSError, ValueError):
                result.append((path, "(reason file missing)"))
        return result


def describe(image: StoredImage) -> dict[str, object]:
    return {
        "file": image.path.name, "image_id": image.image_id, "product": image.manifest.product,
        "version": image.manifest.version, "build": image.manifest.build,
        "variants": list(image.manifest.variants), "key_id": image.key_id,
        "size": image.path.stat().st_size,
    }
