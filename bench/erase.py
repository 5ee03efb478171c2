"""Benchmark erase: the rate of each method Kiln can run on this machine's block devices,
beside the stock tool doing the same job on the same device.

A loop device over a file in `bench/work/erase/` (the repository's file system, not tmpfs)
stands in for a partition. Per round and method, alternating which side goes first:

- discard: Kiln's `carry_out(Method.DISCARD)` against `blkdiscard --force DEV`;
- overwrite: Kiln's `carry_out(Method.OVERWRITE)` (O_DIRECT zeros, fsync) against
  `dd if=/dev/zero of=DEV bs=4M count=N oflag=direct conv=fsync`;
- and the whole region as the ramdisk runs it (`erase.run.erase_region`: canaries written,
  the method, every canary read back with O_DIRECT) with each method, to show what the
  verification costs.

The device is filled with a pattern before every run (not timed). Printed: MiB/s of each run,
the medians, and the ratio kiln/stock of the median times (about 1.0 is the goal; Kiln's
discard is blkdiscard, its overwrite adds progress reports). NVMe format and sanitize and the
ATA commands need the devices themselves: their rates come from certificates (`duration`) on
real units, and in QEMU from the erase tests' consoles.

    .venv/bin/python bench/erase.py [--size-mib 512] [--rounds 3]   # as root
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.capabilities import Capabilities, Method, Scope
from erase.methods import Region, carry_out
from erase.run import erase_region
from kiln.blockdev import Disk, DiskTransport
from kiln.process import run

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "erase"
MIB = 1 << 20


def log(line: str = "") -> None:
    print(line, flush=True)


def capabilities(node: Path, size: int, method: Method) -> Capabilities:
    disk = Disk(name=node.name, path=str(node), sysfs_path="", size_bytes=size, model="loop",
                vendor="", serial="BENCH", transport=DiskTransport.UNKNOWN, rotational=False,
                removable=False, read_only=False)
    return Capabilities(disk=disk, scope=Scope.PARTITION, discard=True, logical_sector=512,
                        methods=(method,))


def fill(node: Path, size: int) -> None:
    block = bytes([0xA5]) * (4 * MIB)
    with node.open("r+b") as handle:
        for _ in range(size // len(block)):
            handle.write(block)
    run(["sync"], timeout=600)


def timed(action: Callable[[], object]) -> float:
    began = time.monotonic()
    action()
    return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    size = options.size_mib * MIB
    WORK.mkdir(parents=True, exist_ok=True)
    backing = WORK / "device.img"
    with backing.open("wb") as handle:
        handle.truncate(size)
    node = Path(run(["losetup", "--find", "--show", backing], timeout=60).text.strip())
    log(f"erase benchmark: {options.size_mib} MiB loop device {node} over {backing}, "
        f"{options.rounds} round(s)")
    region = Region(node=node, size_bytes=size, name="BENCH")

    def kiln(method: Method) -> Callable[[], object]:
        return lambda: carry_out(method, region, capabilities(node, size, method),
                                 progress=lambda done, total: None, root=Path("/"))

    def verified(method: Method) -> Callable[[], object]:
        return lambda: erase_region(region, capabilities(node, size, method), run_id="bench",
                                    progress=lambda done, total: None,
                                    announce=lambda text: None)

    stock = {
        Method.DISCARD: lambda: run(["blkdiscard", "--force", node], timeout=600),
        Method.OVERWRITE: lambda: run(["dd", "if=/dev/zero", f"of={node}", "bs=4M",
                                       f"count={size // (4 * MIB)}", "oflag=direct",
                                       "conv=fsync", "status=none"],
                                      timeout=3600),
    }
    try:
        for method in (Method.DISCARD, Method.OVERWRITE):
            sides: dict[str, list[float]] = {"kiln": [], "stock": [], "kiln verified": []}
            runs = {"kiln": kiln(method), "stock": stock[method],
                    "kiln verified": verified(method)}
            for index in range(options.rounds):
                order = list(runs) if index % 2 == 0 else list(reversed(runs))
                for side in order:
                    fill(node, size)
                    seconds = timed(runs[side])
                    sides[side].append(seconds)
                    log(f"  {method} round {index + 1} {side:<13} {seconds:7.2f} s "
                        f"{options.size_mib / seconds:9.1f} MiB/s")
            medians = {side: statistics.median(times) for side, times in sides.items()}
            log(f"{method}: median kiln {options.size_mib / medians['kiln']:.1f} MiB/s, "
                f"stock {options.size_mib / medians['stock']:.1f} MiB/s, "
                f"kiln verified {options.size_mib / medians['kiln verified']:.1f} MiB/s; "
                f"ratio kiln/stock {medians['kiln'] / medians['stock']:.2f}, "
                f"verified/stock {medians['kiln verified'] / medians['stock']:.2f}")
    finally:
        run(["losetup", "--detach", node], timeout=60)
        backing.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
