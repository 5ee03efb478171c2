"""Benchmark `kiln image extract` against the stock `zstd -dc | tar -x` pipeline.

Builds (once, cached in bench/work/) a Debian bookworm minbase tree with enough packages to
be a realistic appliance root filesystem (at least 300 MiB and 10,000 files), builds a signed
`.upd` from it with `kiln image build` and times that against `tar -c | zstd -T0`, then times
`kiln image extract` (signature, every frame's sha256, tar header checks) against
`zstd -dc IMAGE | tar -x` on the same image, alternating over several rounds. The last line
is `median ratio kiln/stock: X.XX`; the goal is a ratio of at most 1.00.

Run it as root from the repository (see bench/README.md):

    .venv/bin/python bench/image_extract.py [--rounds 5] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.image.builder import DEFAULT_LEVEL, TAR_CREATE
from kiln.image.extract import tar_extract_argv

BENCH = Path(__file__).resolve().parent
DEFAULT_WORK = BENCH / "work"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# Measured on bookworm: minbase alone is ~200 MB and ~5,300 files, too small. These plain
# packages bring it to ~500 MB, ~11,200 regular files and ~17,300 tar members (without the
# downloaded .debs, which are removed).
DEFAULT_INCLUDE = ("python3", "perl", "locales-all")
MIN_BYTES = 300 * 1024 * 1024
MIN_FILES = 10_000
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}

MiB = 1024 * 1024


def log(text: str = "") -> None:
    print(text, flush=True)


def fail(text: str) -> SystemExit:
    print(f"image_extract: error: {text}", file=sys.stderr)
    return SystemExit(2)


def run(argv: Sequence[str | os.PathLike[str]]) -> str:
    """Run a command (output captured, so no progress lines); raise with its stderr."""
    result = subprocess.run(
        [os.fspath(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True,
        env=ENV, check=False,
    )
    if result.returncode:
        stderr = result.stderr.decode(errors="replace").strip()
        command = shlex.join(os.fspath(a) for a in argv)
        raise fail(f"`{command}` exited with {result.returncode}:\n{stderr}")
    return result.stdout.decode(errors="replace")


def timed(argv: Sequence[str | os.PathLike[str]]) -> tuple[float, str]:
    started = time.perf_counter()
    output = run(argv)
    return time.perf_counter() - started, output


def shell(script: str) -> list[str]:
    """A bash command line whose pipeline fails when any of its commands does."""
    return ["bash", "-c", f"set -o pipefail; {script}"]


# --- the root filesystem ---------------------------------------------------------------------


@dataclass(frozen=True)
class TreeStats:
    bytes: int  # apparent size, each inode counted once (like `du -sb`)
    files: int  # regular files (hard links counted per name, like `find -type f`)
    entries: int  # everything tar writes a member for


def tree_stats(root: Path) -> TreeStats:
    seen: set[int] = set()
    size = files = 0
    entries = 1  # the root itself
    for directory, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(directory, name))
            entries += 1
            if stat.S_ISREG(st.st_mode):
                files += 1
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                size += st.st_size
    return TreeStats(bytes=size, files=files, entries=entries)


def ensure_rootfs(work: Path, include: tuple[str, ...], mirror: str) -> Path:
    """The cached debootstrap tree, made if missing or made with other packages."""
    rootfs = work / "rootfs"
    stamp = work / "rootfs.stamp"
    recipe = f"debootstrap --variant=minbase --include={','.join(include)} {SUITE}"
    if rootfs.is_dir() and stamp.is_file() and stamp.read_text() == recipe:
        log(f"rootfs: {recipe} (cached in {rootfs})")
        return rootfs
    debootstrap = shutil.which("debootstrap", path=ENV["PATH"])
    if debootstrap is None:
        raise fail("debootstrap is not installed: run `apt-get install -y debootstrap`")
    for stale in (rootfs, work / "rootfs.partial"):
        if stale.exists():
            shutil.rmtree(stale)
    stamp.unlink(missing_ok=True)
    partial = work / "rootfs.partial"
    log(f"rootfs: {recipe} from {mirror} (log: {work / 'debootstrap.log'}) ...")
    started = time.perf_counter()
    with (work / "debootstrap.log").open("wb") as output:
        code = subprocess.call(
            [debootstrap, "--variant=minbase", f"--include={','.join(include)}", SUITE,
             str(partial), mirror],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=ENV,
        )
    if code:
        raise fail(f"debootstrap failed with exit code {code}; see {work / 'debootstrap.log'}")
    # Package caches are not part of an appliance image.
    for cache in (partial / "var/cache/apt/archives").glob("*.deb"):
        cache.unlink()
    partial.rename(rootfs)
    stamp.write_text(recipe)
    log(f"rootfs: made in {time.perf_counter() - started:.1f} s")
    return rootfs


# --- cache state -------------------------------------------------------------------------------


class CacheState:
    """Puts the page cache into the same state before every timed command.

    Always: `sync` (no writeback of the previous run's files during the next one) and, if
    /proc/sys/vm/drop_caches is writable, drop the caches. Then, unless `cold`: read back what
    both sides need (the input, and each side's programs), so the run measures the pipeline and
    not the disk, the way an image just downloaded or a tree just built is in memory.
    """

    def __init__(self, *, cold: bool, kiln: Path):
        self.cold = cold
        self.kiln = kiln
        self.can_drop = os.access(DROP_CACHES, os.W_OK)

    def describe(self) -> str:
        drop = "sync + drop_caches" if self.can_drop else "sync (drop_caches not writable)"
        warm = "then nothing (input read cold)" if self.cold else (
            "then the input and both sides' programs read back (input hot)"
        )
        return f"before every timed run: {drop}, {warm}"

    def reset(self, *, image: Path | None = None, tree: Path | None = None) -> None:
        os.sync()
        if self.can_drop:
            DROP_CACHES.write_text("3\n")
        if self.cold:
            return
        if image is not None:
            with image.open("rb", buffering=0) as handle:
                buffer = bytearray(8 * MiB)
                while handle.readinto(buffer):
                    pass
        if tree is not None:
            run(shell(f"{shlex.join([*TAR_CREATE, f'--directory={tree}', '.'])} | cat >/dev/null"))
        run([self.kiln, "image", "extract", "--help"])
        run(["zstd", "--version"])
        run(["tar", "--version"])


# --- tree comparison -----------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What extraction must reproduce, per path: type, mode, owner, size, mtime, target, xattrs."""
    entries: dict[str, tuple[object, ...]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames] if directory == str(root) else [
            *dirnames, *filenames
        ]:
            path = os.path.join(directory, name) if name else directory
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else ""
            try:
                xattrs = tuple(sorted(os.listxattr(path, follow_symlinks=False)))
            except OSError:
                xattrs = ()
            size = st.st_size if not os.path.isdir(path) else 0
            entries[os.path.relpath(path, root)] = (
                st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns // 10**9, st.st_rdev,
                link, xattrs,
            )
    return entries


def compare_trees(kiln_tree: dict[str, tuple[object, ...]],
                  stock_tree: dict[str, tuple[object, ...]]) -> int:
    if kiln_tree != stock_tree:
        differ = sorted(
            p for p in kiln_tree.keys() | stock_tree.keys() if kiln_tree.get(p) != stock_tree.get(p)
        )
        raise fail(f"kiln and stock extracted different trees; first differences: {differ[:5]}")
    return len(kiln_tree)


# --- the benchmark ------------------------------------------------------------------------------


def versions() -> str:
    zstd = run(["zstd", "--version"]).split(" v", 1)[-1].split(",")[0].strip()
    tar = run(["tar", "--version"]).splitlines()[0]
    return (
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, zstd {zstd}, {tar}, "
        f"Python {platform.python_version()}"
    )


def find_kiln(given: Path | None) -> Path:
    candidates = [given] if given else [
        Path(sys.executable).with_name("kiln"), BENCH.parent / ".venv/bin/kiln",
    ]
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.absolute()
    found = shutil.which("kiln")
    if given is None and found:
        return Path(found)
    raise fail("cannot find the `kiln` command; pass --kiln PATH")


def mib(count: int) -> str:
    return f"{count / MiB:.1f} MiB"


def build(
    rootfs: Path, work: Path, *, kiln: Path, cache: CacheState, frame_size: str | None
) -> tuple[Path, Path]:
    key = work / "bench"
    if not (work / "bench.key").is_file() or not (work / "bench.pub").is_file():
        run([kiln, "image", "keygen", key])
    image = work / "image.upd"
    stock = work / "stock.tar.zst"
    for stale in (image, stock):
        stale.unlink(missing_ok=True)

    argv = [str(a) for a in (
        kiln, "image", "build", rootfs, "--output", image, "--key", work / "bench.key",
        "--product", "bench", "--version", "1.0.0",
    )]
    if frame_size:
        argv += ["--frame-size", frame_size]
    cache.reset(tree=rootfs)
    kiln_seconds, output = timed(argv)
    built = json.loads(output)

    # zstd's default level is kiln's; `sync FILE` because kiln fsyncs the image it wrote.
    tar = shlex.join([*TAR_CREATE, f"--directory={rootfs}", "."])
    out = shlex.quote(str(stock))
    cache.reset(tree=rootfs)
    stock_seconds, _ = timed(shell(
        f"{tar} | zstd -T0 -{DEFAULT_LEVEL} -q -f -o {out} && sync {out}"
    ))

    kiln_size, stock_size = image.stat().st_size, stock.stat().st_size
    frame = int(built["payload_size"]) / max(int(built["frames"]), 1)
    log(f"build kiln : {kiln_seconds:6.2f} s  {mib(kiln_size)}  "
        f"({built['frames']} frames, ~{mib(int(frame))} each, signed)")
    log(f"build stock: {stock_seconds:6.2f} s  {mib(stock_size)}  "
        f"(tar -c | zstd -T0 -{DEFAULT_LEVEL})")
    log(f"build ratio kiln/stock: time {kiln_seconds / stock_seconds:.2f}, "
        f"size {kiln_size / stock_size:.3f}")
    return image, work / "bench.pub"


def extract_rounds(
    image: Path, public_key: Path, work: Path, *, rounds: int, kiln: Path, cache: CacheState
) -> float:
    target = work / "extract"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()

    def kiln_argv(dest: Path) -> list[str]:
        return [str(a) for a in (kiln, "image", "extract", image, dest, "--trust", public_key)]

    def stock_argv(dest: Path) -> list[str]:
        tar = shlex.join(tar_extract_argv(dest))
        return shell(f"zstd -dc -- {shlex.quote(str(image))} | {tar}")

    log(f"kiln : {shlex.join(kiln_argv(target / 'DEST'))}")
    log(f"stock: {stock_argv(target / 'DEST')[2]}")
    ratios: list[float] = []
    times: dict[str, list[float]] = {"kiln": [], "stock": []}
    for number in range(1, rounds + 1):
        order = ["kiln", "stock"] if number % 2 else ["stock", "kiln"]
        seconds: dict[str, float] = {}
        trees: dict[str, dict[str, tuple[object, ...]]] = {}
        for side in order:
            dest = target / f"{side}-{number}"
            dest.mkdir()
            cache.reset(image=image)
            seconds[side], _ = timed(kiln_argv(dest) if side == "kiln" else stock_argv(dest))
            times[side].append(seconds[side])
            if number == 1:
                trees[side] = snapshot(dest)
            # Gone before the other side runs: each run starts with an empty extract/.
            shutil.rmtree(dest)
        checked = ""
        if number == 1:
            checked = f"  (trees identical: {compare_trees(trees['kiln'], trees['stock'])} entries)"
        ratio = seconds["kiln"] / seconds["stock"]
        ratios.append(ratio)
        log(f"round {number} ({' then '.join(order)}): kiln {seconds['kiln']:6.2f} s  "
            f"stock {seconds['stock']:6.2f} s  ratio {ratio:.2f}{checked}")
    target.rmdir()
    log(f"median: kiln {statistics.median(times['kiln']):.2f} s  "
        f"stock {statistics.median(times['stock']):.2f} s")
    return statistics.median(ratios)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="extraction rounds (default 5)")
    parser.add_argument("--cold", action="store_true",
                        help="do not read the input back after dropping caches")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"cache and scratch directory (default {DEFAULT_WORK})")
    parser.add_argument("--include", default=",".join(DEFAULT_INCLUDE),
                        help="packages debootstrap adds to minbase (default %(default)s)")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror for debootstrap")
    parser.add_argument("--frame-size", help="passed to `kiln image build` (default: kiln's)")
    parser.add_argument("--kiln", type=Path, help="the kiln command (default: the venv's)")
    arguments = parser.parse_args(argv)
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    if os.geteuid() != 0:
        raise fail("run as root: debootstrap, device nodes, owners and drop_caches need it")
    for tool in ("zstd", "tar", "bash"):
        if shutil.which(tool, path=ENV["PATH"]) is None:
            raise fail(f"{tool} is not installed")

    started = time.perf_counter()
    kiln = find_kiln(arguments.kiln)
    work: Path = arguments.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    cache = CacheState(cold=arguments.cold, kiln=kiln)
    log(f"kiln image extract benchmark: {versions()}")
    log(cache.describe())

    include = tuple(p for p in arguments.include.split(",") if p)
    rootfs = ensure_rootfs(work, include, arguments.mirror)
    stats = tree_stats(rootfs)
    log(f"rootfs: {mib(stats.bytes)} ({stats.bytes / 1e6:.0f} MB), {stats.files} files, "
        f"{stats.entries} entries")
    if stats.bytes < MIN_BYTES or stats.files < MIN_FILES:
        raise fail(
            f"the tree must have at least {mib(MIN_BYTES)} and {MIN_FILES} files: add "
            "packages with --include (remove the cached tree with `rm -rf "
            f"{work / 'rootfs'}`)"
        )

    image, public_key = build(
        rootfs, work, kiln=kiln, cache=cache, frame_size=arguments.frame_size
    )
    ratio = extract_rounds(
        image, public_key, work, rounds=arguments.rounds, kiln=kiln, cache=cache
    )
    log(f"benchmark time: {time.perf_counter() - started:.0f} s")
    log(f"median ratio kiln/stock: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
