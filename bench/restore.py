"""Benchmark factory restore in QEMU: Kiln's restore of one image onto PRIMARY against the
stock pipeline `zstd -dc IMAGE | tar -x` onto the same file system in the same VM.

- Setup (cached in `bench/work/restore/`): a key, the ramdisk built for it, a synthetic root
  tree of `--size-mib` (files of 1 KiB to 4 MiB in nested directories, about two thirds
  text-like and one third random bytes, seeded), the signed image of it, and one unit
  manufactured with it by a real `kiln server` (the QEMU tests' factory): its disk, with
  PRIMARY wiped, is the pristine disk every round starts from.
- Rounds (`--rounds`, default 3), alternating which side goes first, each on a fresh copy of
  the pristine disk, booted with the Kiln kernel and ramdisk from the host (`-kernel`; the
  same kernel, ramdisk and console as GRUB's entry):
  - kiln: the ramdisk's own restore (the decision is restore: PRIMARY is blank). Its console
    says `restore: wrote N bytes (M members) in S s`: from opening the image to a `sync`
    after the last member (signature, every frame's sha256, every tar header checked), and
    the whole restore's time (mkfs, configuration, flag).
  - stock: the same ramdisk with `kiln.mode=shell`; typed on its console: a fresh ext4 on
    PRIMARY (as restore makes), then `zstd -dc IMAGE | tar -x --numeric-owner -p -C PRIMARY;
    sync`, timed with the guest's /proc/uptime.
- Printed: each run's seconds and MiB/s (payload bytes over write seconds), the medians, and
  the ratio kiln/stock of the median write times (the goal: at most 1.10 — Kiln verifies
  what the stock pipeline does not). Under TCG (no KVM here) these are emulation rates; the
  ratio is what carries over.

    .venv/bin/python bench/restore.py [--size-mib 512] [--rounds 3]   # as root
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_keys
from initramfs.builder import RamdiskBuild, build_ramdisk
from kiln.image.builder import ImageSpec, build_image
from kiln.image.signing import load_signing_key
from lab import Lab
from lab.diskimage import copy_sparse
from lab.kernel import extract_vmlinux
from lab.profile import GIB, MIB, LabUnit, lab_manufdata
from lab.spec import DirectKernel, Disk, VmSpec
from tests.provision.qemu_factory import blank_disk, manufacture_direct, running_factory

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "restore"
RATIO_GOAL = 1.10
WROTE = re.compile(r"kiln: restore: wrote (\d+) bytes \((\d+) members\) in ([\d.]+) s")
RESTORED = re.compile(r"kiln: restore succeeded: .* restored in ([\d.]+) s")
STOCK = re.compile(r"STOCK-DONE ([\d.]+) ([\d.]+)")
# Typed on the ramdisk's shell (which starts before udev: the disk's modules are loaded
# here): busybox for the small tools, the ramdisk's zstd and GNU tar; the lab profile's BIOS
# layout puts RECOVERY first and PRIMARY second.
STOCK_COMMAND = (
    "modprobe -a virtio_pci virtio_blk ext4; b=busybox; $b mkdir -p /bench/r /bench/p; "
    "r=/dev/vda1; p=/dev/vda2; until [ -b $p ]; do $b sleep 0.2; done; "
    "$b mount -o ro $r /bench/r && "
    "mkfs.ext4 -q -F -L PRIMARY $p && $b mount -o noatime $p /bench/p && "
    "i=$($b ls /bench/r/Image/*.upd | $b head -n 1) && "
    "a=$($b cut -d' ' -f1 /proc/uptime) && "
    "zstd -dc $i | tar -x --numeric-owner -p -C /bench/p && $b sync && "
    "e=$($b cut -d' ' -f1 /proc/uptime) && $b echo STOCK-DONE $a $e\n"
)


def log(line: str = "") -> None:
    print(line, flush=True)


def make_tree(root: Path, size_mib: int) -> None:
    """A synthetic OS-like tree of about `size_mib`: seeded, so every run builds the same."""
    rng = random.Random(20261123)  # noqa: S311 - test data, not secrets
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_./=") for _ in range(rng.randint(2, 12)))
             for _ in range(4000)]
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")  # restore sets root's
    (root / "etc" / "shadow").chmod(0o640)
    total, index = 0, 0
    while total < size_mib * MIB:
        directory = root / f"usr/lib/d{index % 37}/s{index % 11}"
        directory.mkdir(parents=True, exist_ok=True)
        size = int(min(4 * MIB, max(1024, rng.lognormvariate(10.5, 1.6))))
        if index % 3 == 2:
            data = rng.randbytes(size)
        else:
            line = b" ".join(rng.choices(words, k=64)) + b"\n"
            data = (line * (size // len(line) + 1))[:size]
        (directory / f"f{index}").write_bytes(data)
        total += size
        index += 1


def setup(size_mib: int) -> tuple[RamdiskBuild, Path, Path, Path]:
    """(the ramdisk, vmlinux, the image, the pristine disk), made once and cached."""
    keys = bench_keys(WORK).parent
    ramdisk = build_ramdisk(keys=[keys / "bench.pub"])
    vmlinux = extract_vmlinux(ramdisk.kernel, WORK / "vmlinux")
    image = WORK / f"bench-{size_mib}.upd"
    if not image.exists():
        tree = WORK / f"tree-{size_mib}"
        if not tree.exists():
            make_tree(tree, size_mib)
        build_image(tree, image, spec=ImageSpec(product="bench", version="1.0.0", build=0,
                                                variants=("qemu-lab",),
                                                created="2026-11-23T00:00:00Z"),
                    keys=[load_signing_key(keys / "bench.key")])
    pristine = WORK / f"pristine-{size_mib}-{ramdisk.inputs_hash[:12]}.img"
    if not pristine.exists():
        run_dir = WORK / f"factory-{int(time.time())}"
        run_dir.mkdir()
        with running_factory(run_dir, signing_key=load_signing_key(keys / "bench.key"),
                             public_key=keys / "bench.pub", ramdisk=ramdisk) as factory:
            image_id = factory.server.push_image(factory.token, image)
            recovery = (image.stat().st_size * 3 // 2 + 256 * MIB) // MIB * MIB
            mfgurl = factory.profile("bench-restore", lab_manufdata(
                image=image, image_id=image_id, kernel=ramdisk.kernel, initrd=ramdisk.initrd,
                unit=LabUnit(recovery_bytes=recovery, disk_max_bytes=8 * GIB)))
            partial = pristine.with_suffix(".partial")
            blank_disk(partial, 6 * GIB)
            made = manufacture_direct(Lab.detect(), ramdisk, run_dir, mfgurl=mfgurl,
                                      serial="KILN-BENCH-0001", disks=(Disk(image=partial),),
                                      name="manufacture")
            if made.result != "succeeded":
                raise SystemExit(f"manufacture failed: {made.line} (see {run_dir})")
            partial.rename(pristine)
    return ramdisk, vmlinux, image, pristine


def _spec(disk: Path, ramdisk: RamdiskBuild, vmlinux: Path, append: str) -> VmSpec:
    return VmSpec(boot=DirectKernel(kernel=vmlinux, initrd=ramdisk.initrd, append=append),
                  disks=(Disk(image=disk),), memory_mb=2048, no_reboot=True)


def kiln_round(lab: Lab, disk: Path, ramdisk: RamdiskBuild, vmlinux: Path) -> tuple[float, float,
                                                                                    int]:
    """(write seconds, whole restore seconds, payload bytes)."""
    with lab.vm(_spec(disk, ramdisk, vmlinux, "console=ttyS0")) as vm:
        wrote = vm.wait_for(WROTE.pattern, timeout=3600)
        restored = vm.wait_for(RESTORED.pattern, timeout=600)
        vm.wait_exit(timeout=300)
    return float(wrote.group(3)), float(restored.group(1)), int(wrote.group(1))


def stock_round(lab: Lab, disk: Path, ramdisk: RamdiskBuild, vmlinux: Path) -> float:
    with lab.vm(_spec(disk, ramdisk, vmlinux, "console=ttyS0 kiln.mode=shell")) as vm:
        vm.wait_for(r"kiln: starting a shell on", timeout=600)
        time.sleep(2)
        vm.type(STOCK_COMMAND)
        found = vm.wait_for(STOCK.pattern, timeout=3600)
        vm.power_cut()  # synced already; the shell has nothing left to say
    return float(found.group(2)) - float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    ramdisk, vmlinux, image, pristine = setup(options.size_mib)
    lab = Lab.detect()
    log(f"restore benchmark: image {image.name} ({image.stat().st_size / MIB:.0f} MiB "
        f"compressed), {options.rounds} round(s), QEMU with {lab.accel}")
    kiln_writes: list[float] = []
    stock_writes: list[float] = []
    payload = 0
    for index in range(options.rounds):
        sides = ["kiln", "stock"] if index % 2 == 0 else ["stock", "kiln"]
        for side in sides:
            disk = copy_sparse(pristine, WORK / "round.img")
            if side == "kiln":
                write, whole, payload = kiln_round(lab, disk, ramdisk, vmlinux)
                kiln_writes.append(write)
                log(f"  round {index + 1} kiln  write {write:7.2f} s "
                    f"{payload / MIB / write:7.1f} MiB/s; whole restore {whole:.1f} s")
            else:
                seconds = stock_round(lab, disk, ramdisk, vmlinux)
                stock_writes.append(seconds)
                log(f"  round {index + 1} stock write {seconds:7.2f} s "
                    f"{payload / MIB / seconds if payload else 0:7.1f} MiB/s")
            disk.unlink()
    kiln, stock = statistics.median(kiln_writes), statistics.median(stock_writes)
    ratio = kiln / stock
    log(f"median write: kiln {kiln:.2f} s ({payload / MIB / kiln:.1f} MiB/s), stock "
        f"{stock:.2f} s ({payload / MIB / stock:.1f} MiB/s) for {payload / MIB:.0f} MiB; "
        f"ratio kiln/stock {ratio:.2f} (goal ≤ {RATIO_GOAL:.2f}: "
        f"{'met' if ratio <= RATIO_GOAL else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
