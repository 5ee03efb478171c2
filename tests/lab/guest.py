"""The guest the lab's QEMU tests boot: a real Debian kernel and a tiny busybox initramfs.

The kernel and busybox come from Debian packages through `initramfs.debian` (cached under
`$KILN_CACHE`, default ~/.cache/kiln). The initramfs's /init mounts proc/sys/dev, loads the
disk drivers, waits for the disks named in `lab.wait=a,b,…`, prints
`LAB-INIT-OK serial=… disks=…` and powers off, or with `lab.hold=1` keeps running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from initramfs.debian import DebianKernel, DebianPackages, fetch_kernel
from lab import Compression, busybox_initrd, extract_vmlinux

MARKER = r"LAB-INIT-OK serial=(?P<serial>\S*) disks=(?P<disks>\S*)"
DISK_MODULES = ("virtio_pci", "virtio_blk", "ahci", "sd_mod", "nvme")

INIT = """#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
hold=0
want=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lab.hold=1) hold=1 ;;
    lab.wait=*) want=$(echo "${arg#lab.wait=}" | tr , ' ') ;;
  esac
done
for module in $(cat /lib/modules/load-order); do insmod /lib/modules/$module 2>/dev/null; done
for disk in $want; do
  tries=0
  while [ ! -e /sys/block/$disk ] && [ $tries -lt 300 ]; do sleep 0.1; tries=$((tries+1)); done
done
disks=$(ls /sys/block | tr '\\n' ',')
echo "LAB-INIT-OK serial=$(cat /sys/class/dmi/id/product_serial) disks=$disks"
if [ "$hold" = 1 ]; then
  while true; do sleep 3600; done
fi
poweroff -f
"""


@dataclass(frozen=True)
class GuestFiles:
    kernel: DebianKernel
    vmlinuz: Path  # bzImage: PXE, OVMF
    vmlinux: Path  # ELF for PVH direct boots on SeaBIOS (fastest)
    initrd: Path  # gzip newc with busybox and the disk drivers


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))


def build_guest(work: Path) -> GuestFiles:
    cache = cache_dir()
    packages = DebianPackages(cache / "debs")
    kernel = fetch_kernel(packages, cache / "work")
    busybox_root = work / "busybox"
    packages.unpack(packages.fetch(["busybox-static"]), busybox_root)
    modules_dir = kernel.modules / "lib" / "modules" / kernel.version
    initrd = busybox_initrd(
        busybox=busybox_root / "bin" / "busybox", init_script=INIT, out=work / "initrd.gz",
        modules_dir=modules_dir, modules=DISK_MODULES, compression=Compression.GZIP,
    )
    vmlinux = extract_vmlinux(kernel.vmlinuz, cache / "work" / f"vmlinux-{kernel.version}")
    return GuestFiles(kernel=kernel, vmlinuz=kernel.vmlinuz, vmlinux=vmlinux, initrd=initrd)
