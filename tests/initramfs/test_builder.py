"""The ramdisk builder on real Debian packages (the session's build is shared with the QEMU
tests; this file adds one more full build to prove reproducibility)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from initramfs.builder import (
    RamdiskBuild,
    build_ramdisk,
    default_cache,
    inputs_hash,
    project_root,
    source_files,
)
from initramfs.contents import CONTENTS
from initramfs.debian import kernel_package_name, lookup
from initramfs.packages import resolve


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_ramdisk_is_small_and_lists_its_inputs(ramdisk: RamdiskBuild) -> None:
    info = ramdisk.info
    assert info["initrd_bytes"] < 40 * 1024 * 1024
    assert info["kernel_version"].endswith("-amd64")
    names = {line.split()[0] for line in info["packages"]}
    assert set(CONTENTS.debian_packages) <= names
    assert not names & set(CONTENTS.excluded_packages)


@pytest.mark.allow_commands("apt-cache")
def test_a_second_build_from_the_same_inputs_is_reused(
    ramdisk: RamdiskBuild, signing_dir: Path, tmp_path: Path
) -> None:
    again = build_ramdisk(keys=[signing_dir / "test.pub"], out=tmp_path / "out")
    assert again.inputs_hash == ramdisk.inputs_hash
    assert again.info["build_seconds"] == ramdisk.info["build_seconds"], "not rebuilt"
    assert sha256(again.initrd) == sha256(ramdisk.initrd)


@pytest.mark.allow_commands("apt-cache", "apt-get", "dpkg-deb", "depmod", "busybox",
                            "python3.11")
def test_the_same_inputs_give_the_same_bytes_in_a_fresh_cache(
    ramdisk: RamdiskBuild, signing_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shared = default_cache()
    (cache / "debs").symlink_to(shared / "debs")  # downloads are not what is under test
    (cache / "work").symlink_to(shared / "work")
    fresh = build_ramdisk(keys=[signing_dir / "test.pub"], cache=cache)
    assert fresh.directory != ramdisk.directory
    assert sha256(fresh.initrd) == sha256(ramdisk.initrd)
    assert sha256(fresh.kernel) == sha256(ramdisk.kernel)


@pytest.mark.allow_commands("apt-cache")
def test_a_different_key_is_a_different_input(
    ramdisk: RamdiskBuild, signing_dir: Path
) -> None:
    packages = resolve(CONTENTS)
    kernel = lookup(kernel_package_name())
    common = {"packages": packages, "kernel_sha256": kernel.sha256, "root": project_root(),
              "sources": source_files(project_root(), CONTENTS.kiln_packages),
              "contents": CONTENTS}
    ours = inputs_hash(keys=[signing_dir / "test.pub"], **common)  # type: ignore[arg-type]
    other = inputs_hash(keys=[signing_dir / "other.pub"], **common)  # type: ignore[arg-type]
    assert ours == ramdisk.inputs_hash
    assert other != ours
