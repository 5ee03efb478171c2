"""The test OS the QEMU restore tests install: busybox and an init that reports on the
console what restore wrote and what DATA holds, as one line starting with `OS_MARK`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import zstandard

from kiln.cpio import CpioEntry, CpioWriter
from kiln.image.builder import ImageSpec, build_image
from kiln.image.signing import SigningKey
from recovery.bootfiles import add_boot_files
from tests.initramfs.conftest import make_test_root

OS_MARK = "KILN-TEST-OS:"
STORED = "/opt/kiln-test/stored.upd"  # in an OS image made with `stores=`
# Every test OS's init starts so: DATA on /run/data, RECOVERY on /run/recovery, the boot
# confirmed (what `kiln boot-done` does; busybox has no Python for the real command).
INIT_START = """#!/bin/busybox sh
b=/bin/busybox
$b mount -t proc proc /proc
$b mount -t tmpfs tmpfs /run
$b mkdir -p /run/data /run/recovery
$b mount "$($b findfs LABEL=DATA)" /run/data
$b mount "$($b findfs LABEL=RECOVERY)" /run/recovery
$b rm -f /run/recovery/state/unconfirmed-boots.json
"""
# The test OS: it reports what restore wrote and what DATA holds; on its first boot it
# leaves a file on DATA and asks for a restore that keeps DATA, as `kiln request restore`
# would (tests/recovery/test_requests.py has the real command). An OS image made with
# `stores=` also stores that image on RECOVERY first, as an update agent would.
OS_INIT = INIT_START + f"""data=$($b cat /run/data/customer.txt 2>/dev/null || $b echo none)
$b echo "{OS_MARK} pid $$ version $($b cat /etc/version) host $($b cat /etc/hostname) \\
data $data id $($b cat /etc/machine-id)"
if [ "$data" = none ]; then
    if [ -f {STORED} ]; then
        $b cp {STORED} /run/recovery/Image/.stored.partial
        $b mv /run/recovery/Image/.stored.partial /run/recovery/Image/stored.upd
    fi
    $b echo "keep me" > /run/data/customer.txt
    $b mkdir -p /run/recovery/requests
    $b echo '{{"keep_data": true, "reason": "test OS"}}' > /run/recovery/requests/restore.json
fi
$b sync
$b umount /run/data /run/recovery
$b poweroff -f
"""


@dataclass(frozen=True, kw_only=True)
class BootPair:
    """A Kiln kernel and ramdisk for an image to carry (`recovery.bootfiles`)."""

    kernel: Path
    initrd: Path
    version: str


def versioned_ramdisk(initrd: Path, version: str, out: Path) -> Path:
    """`initrd` with /etc/kiln/boot.json saying `version` appended as a second cpio archive
    (the kernel unpacks them in order, the later file wins), in one zstd stream: a ramdisk
    that tells on its first console line that it is the newer one."""
    with initrd.open("rb") as source:
        archive = zstandard.ZstdDecompressor().stream_reader(source).read()
    extra = out.with_suffix(".cpio")
    with extra.open("wb") as handle:
        writer = CpioWriter(handle)
        writer.add(CpioEntry.file("etc/kiln/boot.json",
                                  json.dumps({"version": version}).encode()))
        writer.finish()
    out.write_bytes(zstandard.ZstdCompressor(level=3).compress(archive + extra.read_bytes()))
    return out


def make_os_image(work: Path, key: SigningKey, version: str, *, init: str = OS_INIT,
                  boot_files: BootPair | None = None, stores: Path | None = None) -> Path:
    """A signed image of a tiny OS: busybox, an init that prints what restore wrote; with
    `boot_files`, carrying a Kiln kernel and ramdisk; with `stores`, an image its first
    boot stores on RECOVERY."""
    root = make_test_root(work / f"os-{version}", flag=False)
    if boot_files is not None:
        add_boot_files(root, kernel=boot_files.kernel, initrd=boot_files.initrd,
                       version=boot_files.version)
    if stores is not None:
        (root / STORED[1:]).parent.mkdir(parents=True)
        shutil.copyfile(stores, root / STORED[1:])
    (root / "sbin" / "init").write_text(init)
    (root / "etc").mkdir()
    (root / "etc" / "version").write_text(f"{version}\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    out = work / f"testos-{version}.upd"
    build_image(root, out, spec=ImageSpec(product="demo", version=version, build=0,
                                          variants=("qemu-lab",),
                                          created="2026-11-01T00:00:00Z"), keys=[key])
    return out
