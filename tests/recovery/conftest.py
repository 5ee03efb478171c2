from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.image.builder import ImageSpec, build_image
from kiln.image.signing import SigningKey

MakeImage = Callable[..., Path]


@pytest.fixture
def make_image(tmp_path: Path, signing_key: SigningKey) -> MakeImage:
    """Build a small real image; the payload differs per version so ids differ."""
    counter = iter(range(10_000))

    def make(
        version: str, build: int = 0, *, variants: tuple[str, ...] = ("*",),
        key: SigningKey | None = None, name: str | None = None, size: int = 200_000,
    ) -> Path:
        number = next(counter)
        rootfs = tmp_path / f"rootfs-{number}"
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc" / "version").write_text(f"{version}+{build}\n")
        (rootfs / "blob").write_bytes(bytes(range(256)) * (size // 256) + version.encode())
        out = tmp_path / "built" / (name or f"image-{number}.upd")
        out.parent.mkdir(exist_ok=True)
        build_image(
            rootfs, out,
            spec=ImageSpec(product="demo", version=version, build=build, variants=variants,
                           frame_size=16384, created="2026-11-01T00:00:00Z"),
            keys=[key or signing_key],
        )
        return out

    return make
