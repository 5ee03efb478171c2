"""`kiln initramfs build`: the Debian-based Kiln ramdisk and the kernel that boots it.

Inputs: Debian bookworm packages (resolved from `initramfs.contents`, verified by the apt
index's sha256), Debian's kernel, the project's appliance-side packages, the trusted
image-signing keys. The same inputs give the same bytes (sorted cpio entries, fixed
timestamps, unchecked-hash .pyc), and a build is cached under a hash of its inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from initramfs import staging
from initramfs.contents import CONTENTS, RamdiskContents
from initramfs.debian import DebianPackages, fetch_kernel, kernel_package_name, lookup
from initramfs.packages import resolve
from kiln.cpio import CpioEntry, CpioWriter
from kiln.errors import KilnError

log = logging.getLogger(__name__)

BUILDER_VERSION = 2
ZSTD_LEVEL = 19
SOURCE_DATE_EPOCH = 1_700_000_000  # fixed: the archive's timestamps say nothing of the build
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.zst"
INFO_FILE = "build.json"
# Present before PID 1 mounts devtmpfs: the kernel opens the console for /init, and Python
# reads /dev/urandom for its hash seed while starting.
EARLY_DEVICES = (
    CpioEntry.char_device("dev/console", 5, 1),
    CpioEntry.char_device("dev/null", 1, 3, 0o666),
    CpioEntry.char_device("dev/zero", 1, 5, 0o666),
    CpioEntry.char_device("dev/random", 1, 8, 0o666),
    CpioEntry.char_device("dev/urandom", 1, 9, 0o666),
    CpioEntry.char_device("dev/tty", 5, 0, 0o666),
)


class BuildError(KilnError):
    pass


@dataclass(frozen=True)
class RamdiskBuild:
    directory: Path
    kernel: Path
    initrd: Path
    kernel_version: str
    inputs_hash: str
    info: dict[str, Any]


def default_cache() -> Path:
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def source_files(root: Path, packages: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for package in packages:
        files.extend(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)
        files.extend((root / package).glob("py.typed"))
    return sorted(files)


def inputs_hash(*, packages: Sequence[Any], kernel_sha256: str, sources: Sequence[Path],
                root: Path, keys: Sequence[Path], contents: RamdiskContents) -> str:
    digest = hashlib.sha256()
    digest.update(f"builder {BUILDER_VERSION}\n{contents!r}\nkernel {kernel_sha256}\n".encode())
    for package in packages:
        digest.update(f"deb {package.name} {package.version} {package.sha256}\n".encode())
    for path in sources:
        digest.update(f"src {path.relative_to(root)} ".encode() + path.read_bytes() + b"\n")
    for key in sorted(keys):
        digest.update(b"key " + key.read_bytes() + b"\n")
    return digest.hexdigest()


def _cached(directory: Path, digest: str) -> RamdiskBuild | None:
    try:
        info = json.loads((directory / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    if info.get("inputs_hash") != digest:
        return None
    for name in (KERNEL_FILE, INITRD_FILE):
        if not (directory / name).is_file():
            return None
    return RamdiskBuild(
        directory=directory, kernel=directory / KERNEL_FILE, initrd=directory / INITRD_FILE,
        kernel_version=info["kernel_version"], inputs_hash=digest, info=info,
    )


def build_ramdisk(
    *, keys: Sequence[Path], cache: Path | None = None, out: Path | None = None,
    contents: RamdiskContents = CONTENTS,
) -> RamdiskBuild:
    """Build (or reuse) the ramdisk; with `out`, also place vmlinuz/initrd.zst there."""
    started = time.monotonic()
    cache = cache or default_cache()
    root = project_root()
    if not keys:
        raise BuildError("a ramdisk needs at least one trusted image-signing public key")
    packages = resolve(contents)
    kernel_package = lookup(kernel_package_name())
    digest = inputs_hash(
        packages=packages, kernel_sha256=kernel_package.sha256,
        sources=source_files(root, contents.kiln_packages), root=root, keys=keys,
        contents=contents,
    )
    target = cache / "ramdisk" / digest[:16]
    build = _cached(target, digest)
    if build is None:
        build = _build(target, digest=digest, packages=packages, keys=keys, cache=cache,
                       contents=contents, root=root, started=started)
    else:
        log.info("reusing the ramdisk built from the same inputs: %s", target)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in (KERNEL_FILE, INITRD_FILE, INFO_FILE):
            shutil.copyfile(build.directory / name, out / name)
        build = RamdiskBuild(
            directory=out, kernel=out / KERNEL_FILE, initrd=out / INITRD_FILE,
            kernel_version=build.kernel_version, inputs_hash=digest, info=build.info,
        )
    return build


def _build(target: Path, *, digest: str, packages: Sequence[Any], keys: Sequence[Path],
           cache: Path, contents: RamdiskContents, root: Path, started: float) -> RamdiskBuild:
    debs = DebianPackages(cache / "debs")
    debs.fetch([p.name for p in packages])
    kernel = fetch_kernel(debs, cache / "work")
    work = cache / "ramdisk" / f".build-{digest[:16]}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    try:
        staging.assemble(tree, debs=debs, packages=packages, kernel=kernel, keys=keys,
                         contents=contents, project=root, mtime=SOURCE_DATE_EPOCH)
        problems = staging.check(tree, contents)
        if problems:
            raise BuildError("the ramdisk is incomplete:\n  " + "\n  ".join(problems))
        files = sum(1 for _ in tree.rglob("*"))
        unpacked = staging.tree_size(tree)
        cpio_path = work / "initrd.cpio"
        with cpio_path.open("wb") as handle:
            writer = CpioWriter(handle, mtime=SOURCE_DATE_EPOCH)
            writer.add_tree(tree)
            for node in EARLY_DEVICES:
                writer.add(node)
            writer.finish()
        work_target = work / "out"
        work_target.mkdir()
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
        with cpio_path.open("rb") as source, (work_target / INITRD_FILE).open("wb") as sink:
            compressor.copy_stream(source, sink)
        shutil.copyfile(kernel.vmlinuz, work_target / KERNEL_FILE)
        info = {
            "inputs_hash": digest,
            "builder_version": BUILDER_VERSION,
            "kernel_version": kernel.version,
            "kernel_package": f"{kernel.package.name} {kernel.package.version}",
            "packages": [f"{p.name} {p.version}" for p in packages],
            "files": files,
            "unpacked_bytes": unpacked,
            "cpio_bytes": cpio_path.stat().st_size,
            "initrd_bytes": (work_target / INITRD_FILE).stat().st_size,
            "kernel_bytes": (work_target / KERNEL_FILE).stat().st_size,
            "build_seconds": round(time.monotonic() - started, 1),
            "python": sys.version.split()[0],
        }
        (work_target / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work_target, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(work)
    log.info("built the ramdisk in %.0f s: %s", info["build_seconds"], target)
    built = _cached(target, digest)
    assert built is not None
    return built
