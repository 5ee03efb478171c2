"""The Kiln ramdisk's figures: size, build time (cold and cached), and in a VM the time from
the kernel starting /init to the boot decision and Python's import times.

Run as root from the repository with the venv set up:

    .venv/bin/python bench/ramdisk.py [--boots N]

"Cold" builds into an empty ramdisk cache (the downloaded .debs are reused: the network is
not what is measured); "cached" asks again with the same inputs. Boots run under whatever
accelerator the lab detects (KVM where it works, else TCG) and say which.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from initramfs.builder import RamdiskBuild, build_ramdisk, default_cache
from kiln.image.signing import generate_keypair
from lab import DirectKernel, Lab, VmSpec

DECISION = re.compile(r"decision: \w+ .* at ([\d.]+) s, ([\d.]+) s after /init started")
STARTED = re.compile(r"Kiln ramdisk started \(run \w+\) at ([\d.]+) s")
UDEV = re.compile(r"udev settled in ([\d.]+) s")
IMPORTED = re.compile(r"selftest: imported (\d+) modules in ([\d.]+) s")
IMPORT_ONE = re.compile(r"selftest: import (\S+) \(([\d.]+) s\)")
MIB = 1024 * 1024


def build(key: Path, work: Path) -> tuple[RamdiskBuild, float, float]:
    cache = work / "cache"
    cache.mkdir()
    shared = default_cache()
    (cache / "debs").symlink_to(shared / "debs")
    (cache / "work").symlink_to(shared / "work")
    started = time.monotonic()
    cold = build_ramdisk(keys=[key], cache=cache)
    cold_seconds = time.monotonic() - started
    started = time.monotonic()
    build_ramdisk(keys=[key], cache=cache)
    return cold, cold_seconds, time.monotonic() - started


def boot(lab: Lab, ramdisk: RamdiskBuild, append: str) -> str:
    spec = VmSpec(boot=DirectKernel(kernel=ramdisk.kernel, initrd=ramdisk.initrd,
                                    append=f"console=ttyS0 quiet {append}"),
                  memory_mb=1024, no_reboot=True)
    with lab.vm(spec) as vm:
        vm.wait_for(DECISION.pattern, timeout=300)
        return vm.console_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=3, help="VM boots to time (default 3)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-ramdisk-") as scratch:
        work = Path(scratch)
        generate_keypair(work / "bench.key", work / "bench.pub")
        ramdisk, cold, cached = build(work / "bench.pub", work)
        info = ramdisk.info
        print(f"ramdisk: {info['initrd_bytes'] / MIB:.1f} MiB compressed (zstd -19), "
              f"{info['cpio_bytes'] / MIB:.1f} MiB unpacked cpio, {info['files']} files, "
              f"{len(info['packages'])} Debian packages; kernel {info['kernel_version']} "
              f"{info['kernel_bytes'] / MIB:.1f} MiB")
        print(f"build: cold {cold:.1f} s, cached {cached:.2f} s")
        lab = Lab.detect()
        print(f"accelerator: {lab.accel.value}")
        decisions, pythons, udevs = [], [], []
        for number in range(1, arguments.boots + 1):
            text = boot(lab, ramdisk, "")
            decision = DECISION.search(text)
            started = STARTED.search(text)
            udev = UDEV.search(text)
            assert decision and started and udev, text[-2000:]
            init_at = float(decision.group(1)) - float(decision.group(2))
            decisions.append(float(decision.group(2)))
            pythons.append(float(started.group(1)) - init_at)
            udevs.append(float(udev.group(1)))
            print(f"boot {number}: /init at {init_at:.2f} s, Python's main after "
                  f"{pythons[-1]:.2f} s, udev settled in {udevs[-1]:.2f} s, decision "
                  f"{decisions[-1]:.2f} s after /init")
        text = boot(lab, ramdisk, "kiln.debug=selftest")
        imported = IMPORTED.search(text)
        assert imported, text[-2000:]
        slowest = sorted(((float(s), name) for name, s in IMPORT_ONE.findall(text)),
                         reverse=True)[:4]
        print(f"imports of all {imported.group(1)} declared modules: {imported.group(2)} s "
              f"(slowest: {', '.join(f'{n} {s:.2f} s' for s, n in slowest)})")
        print(f"median under {lab.accel.value}: /init → decision {statistics.median(decisions):.2f}"
              f" s (Python start {statistics.median(pythons):.2f} s, udev "
              f"{statistics.median(udevs):.2f} s)")


if __name__ == "__main__":
    main()
