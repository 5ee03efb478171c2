"""Small real `.upd` images for the server tests, built by the project's own builder (GNU tar:
tests using these need `@pytest.mark.allow_commands("tar")`), and looks at the blob store."""

from __future__ import annotations

import random
from pathlib import Path

from kiln.image.builder import ImageSpec, build_image
from kiln.image.manifest import Manifest
from kiln.image.signing import SigningKey

FRAME_SIZE = 64 * 1024
CREATED = "2026-11-01T00:00:00Z"


def build_test_image(directory: Path, keys: list[SigningKey], *, version: str = "1.0.0",
                     product: str = "demo", build: int = 1,
                     seed: int = 5) -> tuple[Path, Manifest]:
    """A signed image of a tiny tree (several 64 KiB frames) at DIRECTORY/PRODUCT-VERSION.upd."""
    rootfs = directory / f"rootfs-{product}-{version}-{seed}"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "os-release").write_text(f'NAME="{product}"\nVERSION="{version}"\n')
    generator = random.Random(seed)  # noqa: S311 - repeatable test data
    (rootfs / "blob").write_bytes(generator.randbytes(150_000))
    (rootfs / "zeros").write_bytes(bytes(100_000))
    out = directory / f"{product}-{version}-{build}-{seed}.upd"
    spec = ImageSpec(product=product, version=version, build=build, variants=("qemu-lab",),
                     frame_size=FRAME_SIZE, created=CREATED)
    manifest = build_image(rootfs, out, spec=spec, keys=keys)
    assert len(manifest.frames) >= 3
    return out, manifest


def stored_blobs(store_dir: Path) -> list[str]:
    """The sha256 of every blob in the store (sidecars left out)."""
    objects = store_dir / "sha256"
    if not objects.is_dir():
        return []
    return sorted(path.name for path in objects.glob("*/*") if not path.name.endswith(".json"))


def store_leftovers(store_dir: Path) -> list[str]:
    """Everything under the store except the lock file: what a refused upload must not add."""
    return sorted(str(path.relative_to(store_dir)) for path in store_dir.rglob("*")
                  if path.is_file() and path.name != ".lock")
