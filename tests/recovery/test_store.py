from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kiln.image.reader import ImageReader
from kiln.image.signing import SigningKey, TrustStore
from kiln.image.source import FileSource
from recovery.store import ImageStore, NoGoodImageError, StoreFullError
from tests.recovery.conftest import MakeImage

pytestmark = pytest.mark.allow_commands("tar")


def flip_byte_in_frame(path: Path, trust: TrustStore, index: int) -> None:
    with ImageReader(FileSource(path), trust) as reader:
        frame = reader.manifest.frames[index]
        position = reader.payload_offset + frame.offset + frame.length // 2
    with path.open("r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def store(tmp_path: Path, trust: TrustStore) -> ImageStore:
    root = tmp_path / "RECOVERY"
    (root / "Image").mkdir(parents=True)
    return ImageStore(root, trust)


def place(store: ImageStore, image: Path, name: str) -> Path:
    target = store.image_dir / name
    shutil.copy(image, target)
    return target


def test_images_sort_by_manifest_version_and_build_not_name(
    store: ImageStore, make_image: MakeImage
) -> None:
    place(store, make_image("1.10", 2), "a.upd")
    place(store, make_image("1.9", 7), "z.upd")
    place(store, make_image("1.10", 10), "m.upd")
    place(store, make_image("2.0", 0), "0.upd")
    labels = [(i.manifest.version, i.manifest.build) for i in store.images()]
    assert labels == [("2.0", 0), ("1.10", 10), ("1.10", 2), ("1.9", 7)]


def test_pick_quarantines_a_corrupt_newest_image_and_takes_the_next(
    store: ImageStore, make_image: MakeImage, trust: TrustStore
) -> None:
    place(store, make_image("1.0"), "old.upd")
    newest = place(store, make_image("2.0"), "new.upd")
    flip_byte_in_frame(newest, trust, 3)

    picked = store.pick()

    assert picked.manifest.version == "1.0"
    assert not newest.exists()
    [(path, reason)] = store.quarantined()
    assert path.name == "new.upd"
    assert "frame 3" in reason
    # Quarantined images are never looked at again.
    assert [i.manifest.version for i in store.images()] == ["1.0"]


def test_pick_skips_an_image_abandoned_after_repeated_failures(
    store: ImageStore, make_image: MakeImage
) -> None:
    place(store, make_image("1.0"), "old.upd")
    place(store, make_image("2.0"), "new.upd")
    newest = store.pick()
    assert newest.manifest.version == "2.0"
    store.history.begin_attempt(newest.image_id)
    store.history.finish_attempt(newest.image_id, succeeded=False, reason="mkfs failed")
    store.history.begin_attempt(newest.image_id)  # then the power was cut
    assert store.pick().manifest.version == "2.0", "two failures are below the limit"
    store.history.begin_attempt(newest.image_id)  # still open: the third failure
    picked = store.pick()
    assert picked.manifest.version == "1.0"


def test_pick_honours_the_variant(store: ImageStore, make_image: MakeImage) -> None:
    place(store, make_image("1.0", variants=("std",)), "a.upd")
    place(store, make_image("2.0", variants=("big",)), "b.upd")
    assert store.pick(variant="std").manifest.version == "1.0"
    with pytest.raises(NoGoodImageError, match="not for variant 'tiny'"):
        store.pick(variant="tiny")


def test_no_good_image_lists_every_reason(
    store: ImageStore, make_image: MakeImage, trust: TrustStore
) -> None:
    broken = place(store, make_image("1.0"), "a.upd")
    flip_byte_in_frame(broken, trust, 0)
    (store.image_dir / "junk.upd").write_bytes(b"not an image at all")
    with pytest.raises(NoGoodImageError) as raised:
        store.pick()
    assert len(raised.value.reasons) == 1
    assert "frame 0" in raised.value.reasons[0]
    assert {p.name for p, _ in store.quarantined()} == {"a.upd", "junk.upd"}


def test_an_image_signed_by_an_unknown_key_is_skipped_not_quarantined(
    store: ImageStore, make_image: MakeImage, other_key: SigningKey
) -> None:
    foreign = place(store, make_image("3.0", key=other_key), "foreign.upd")
    place(store, make_image("1.0"), "ours.upd")
    assert [i.manifest.version for i in store.images()] == ["1.0"]
    assert foreign.exists()
    assert store.quarantined() == []


def test_add_is_atomic_verified_and_idempotent(store: ImageStore, make_image: MakeImage) -> None:
    source = make_image("1.2", 3)
    added = store.add(source)
    assert added.path.parent == store.image_dir
    assert added.path.name.startswith("demo-1.2-b3-")
    assert added.path.read_bytes() == source.read_bytes()
    assert list(store.incoming_dir.iterdir()) == []
    again = store.add(source)
    assert again.path == added.path
    assert len(list(store.image_dir.glob("*.upd"))) == 1


def test_add_refuses_a_tampered_image_and_publishes_nothing(
    store: ImageStore, make_image: MakeImage, trust: TrustStore
) -> None:
    source = make_image("1.0")
    flip_byte_in_frame(source, trust, 5)
    with pytest.raises(Exception, match="frame 5"):
        store.add(source)
    assert list(store.image_dir.glob("*.upd")) == []


def test_add_resumes_a_partial_copy_at_its_last_good_frame(
    store: ImageStore, make_image: MakeImage, trust: TrustStore
) -> None:
    source = make_image("1.0")
    with ImageReader(FileSource(source), trust) as reader:
        frames = reader.manifest.frames
        cut = reader.payload_offset + frames[4].offset + 100  # inside frame 4
        image_id = reader.image_id
    store.incoming_dir.mkdir(parents=True)
    partial = store.incoming_dir / f"{image_id}.upd.partial"
    partial.write_bytes(source.read_bytes()[:cut])
    original = source.read_bytes()
    # Spoil frames 0-3 in the source: a resume never reads them again, a restart would fail.
    for index in range(4):
        flip_byte_in_frame(source, trust, index)

    added = store.add(source)

    assert added.path.read_bytes() == original
    assert not partial.exists()


def test_add_checks_free_space_before_writing(
    store: ImageStore, make_image: MakeImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_image("1.0")
    real = os.statvfs(store.image_dir)

    class Full:
        f_frsize = real.f_frsize
        f_bavail = 0

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    with pytest.raises(StoreFullError, match="not enough space on RECOVERY"):
        store.add(source)
    assert list(store.image_dir.glob("*.upd")) == []


def test_prune_keeps_the_newest_good_images_and_the_factory_image(
    store: ImageStore, make_image: MakeImage
) -> None:
    factory = store.add(make_image("1.0"))
    store.set_factory_image(factory)
    for version in ("1.1", "1.2", "1.3"):
        store.add(make_image(version))
    newest = store.add(make_image("1.4"))
    for _ in range(3):
        store.history.begin_attempt(newest.image_id)  # 1.4 never boots: abandoned

    result = store.prune(keep=2)

    assert sorted(i.manifest.version for i in result.kept) == ["1.0", "1.2", "1.3"]
    assert sorted(i.manifest.version for i in result.removed) == ["1.1", "1.4"]
    assert sorted(i.manifest.version for i in store.images()) == ["1.0", "1.2", "1.3"]
    assert newest.image_id not in store.history.records()


def test_prune_bounds_the_quarantine(
    store: ImageStore, make_image: MakeImage, trust: TrustStore
) -> None:
    for number in range(4):
        path = place(store, make_image(f"1.{number}"), f"bad-{number}.upd")
        flip_byte_in_frame(path, trust, 0)
        os.utime(path, (1000 + number, 1000 + number))
    with pytest.raises(NoGoodImageError):
        store.pick()
    result = store.prune(keep=1, keep_quarantined=2)
    assert sorted(p.name for p in result.removed_quarantine) == ["bad-0.upd", "bad-1.upd"]
    assert sorted(p.name for p, _ in store.quarantined()) == ["bad-2.upd", "bad-3.upd"]
