"""Filling RECOVERY at manufacture: every file manufData names, the trusted keys and the
unit's state.

Images go through the image store (`recovery.store.ImageStore.add`: frame by verified frame,
resumable, verified again from the disk, nothing visible until complete) and are then
checked against manufData's size and sha256; other files through
`kiln.download.download_verified` (resumable, sha256 checked before the rename and again
from the disk). Both download straight to RECOVERY, never through RAM. Each file is a stage
`manufacture/recovery/<destination>` with progress events (every tenth of the way) carrying
bytes, rate and time left. The newest image placed becomes the factory image (kept by every
prune). `state/` gets the identity, the factory configuration and the server's endpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.contract import to_json
from kiln.download import DownloadError, download_verified
from kiln.events import EventRecorder
from kiln.fsutil import atomic_write_bytes
from kiln.image.signing import PUBLIC_KEY_SUFFIXES, TrustStore
from kiln.manufdata import FileKind, FileSpec, ManufData
from kiln.progress import Progress, format_bytes, format_duration
from kiln.serverclient import ServerClient
from recovery.layout import RecoveryLayout, StateFile
from recovery.store import ImageStore, StoredImage

STAGE = "manufacture/recovery"


@dataclass(frozen=True, kw_only=True)
class Identity:
    serial: str
    variant: str
    profile_url: str  # manufData's URL, without credentials
    run_id: str
    manufactured_ns: int


class EventProgress(Progress):
    """Console progress that also sends a progress event every tenth of the way."""

    def __init__(self, label: str, *, recorder: EventRecorder, stage: str):
        super().__init__(label)
        self.recorder = recorder
        self.stage = stage
        self._reported = -1

    def advance(self, count: int) -> None:
        super().advance(count)
        if not self.total:
            return
        tenth = 10 * self.done // self.total
        if tenth > self._reported:
            self._reported = tenth
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = self.done / elapsed
            left = (self.total - self.done) / rate if rate else 0
            self.recorder.progress(self.stage, done=self.done, total=self.total,
                                   message=f"{format_bytes(rate)}/s, "
                                           f"{format_duration(left)} left")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _place_image(spec: FileSpec, *, store: ImageStore, client: ServerClient,
                 progress: Progress) -> StoredImage:
    image = store.add(client.source(spec.url), progress=progress)
    size, sha256 = image.path.stat().st_size, _sha256_of(image.path)
    if (size, sha256) != (spec.size_bytes, spec.sha256):
        image.path.unlink()
        raise DownloadError(f"{spec.url}: the image is {size} bytes with sha256 {sha256}; "
                            f"manufData says {spec.size_bytes} bytes, {spec.sha256}")
    return image


def fill_recovery(manufdata: ManufData, *, client: ServerClient, layout: RecoveryLayout,
                  trust: TrustStore, recorder: EventRecorder) -> list[Path]:
    """Download every file to RECOVERY (mounted at `layout.root`); return where they are."""
    store = ImageStore(layout.root, trust)
    placed: list[Path] = []
    images: list[StoredImage] = []
    for spec in manufdata.files:
        stage = f"{STAGE}/{spec.destination}"
        with recorder.stage(stage, f"{spec.url} ({format_bytes(spec.size_bytes)})"), \
                EventProgress(spec.destination, recorder=recorder, stage=stage) as progress:
            if spec.kind is FileKind.IMAGE:
                images.append(_place_image(spec, store=store, client=client,
                                           progress=progress))
                placed.append(images[-1].path)
            else:
                with contextlib.closing(client.source(spec.url)) as source:
                    placed.append(download_verified(
                        source, layout.root / spec.destination, sha256=spec.sha256,
                        size=spec.size_bytes, progress=progress))
    if images:
        newest = max(images, key=lambda image: image.manifest.sort_key)
        store.set_factory_image(newest)
    return placed


def install_keys(trust_dir: Path, layout: RecoveryLayout) -> list[Path]:
    """The ramdisk's trusted image-signing keys onto RECOVERY (`keys/`)."""
    layout.keys.mkdir(parents=True, exist_ok=True)
    copied = []
    for key in sorted(trust_dir.iterdir()):
        if key.suffix in PUBLIC_KEY_SUFFIXES:
            target = layout.keys / key.name
            shutil.copyfile(key, target)
            copied.append(target)
    return copied


def write_state(layout: RecoveryLayout, *, identity: Identity, manufdata: ManufData) -> None:
    """`state/`: identity, the factory configuration and the server's endpoints."""
    layout.state.mkdir(parents=True, exist_ok=True)

    def write(name: StateFile, document: Any, mode: int = 0o644) -> None:
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(layout.state_file(name), text.encode(), mode=mode)

    write(StateFile.IDENTITY, to_json(identity))
    write(StateFile.FACTORY, to_json(manufdata))
    if manufdata.server is not None:
        write(StateFile.SERVER, to_json(manufdata.server))
