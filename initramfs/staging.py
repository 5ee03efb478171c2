"""Assemble the ramdisk's file tree, prune it, and check it is complete.

Debian packages are unpacked without running maintainer scripts, so the few things those
scripts would do are done here: the python3 and sh links, the CA bundle, busybox applets for
the rescue shell, depmod for the kernel-module subset.
"""

from __future__ import annotations

import configparser
import os
import shutil
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

from initramfs.contents import RamdiskContents
from initramfs.debian import DebianKernel, DebianPackages, DebPackage
from initramfs.elf import is_elf, read_deps
from kiln.kmod import module_closure
from kiln.process import run

PYTHON = "python3.11"
SITE = Path("usr/lib/python3/dist-packages")
PATH_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
    "usr/share/bug", "usr/share/bash-completion", "usr/share/zsh", "usr/share/menu",
    "usr/share/pixmaps", "usr/share/gcc", "usr/share/gdb", "usr/share/common-licenses",
    "usr/include", "usr/lib/x86_64-linux-gnu/gconv", "usr/lib/udev/hwdb.d", "lib/udev/hwdb.d",
    "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/distutils",
    "usr/lib/python3.11/pydoc_data", "usr/lib/python3.11/unittest/test",
    "usr/lib/python3.11/ctypes/test", "usr/lib/python3.11/sqlite3/test",
    "usr/lib/python3.11/config-3.11-x86_64-linux-gnu", "etc/init.d", "etc/cron.daily",
    "etc/cron.d", "etc/logrotate.d", "lib/systemd/system", "usr/lib/systemd/system",
)
# Extension modules whose libraries the ramdisk leaves out on purpose.
PRUNE_GLOBS = ("usr/lib/python3.11/lib-dynload/nis.*", "usr/lib/python3.11/lib-dynload/_dbm.*",
               "**/*.a")


def init_script(python: str) -> str:
    """PID 1's entry point, `/init`, run by `python`: the one text both ramdisks carry (the
    buildroot tree's post-build script writes it through `python -m initramfs.buildroot`)."""
    return f"#!{python} -I\nfrom initramfs.init import main\n\nmain()\n"


INIT_SCRIPT = init_script(f"/usr/bin/{PYTHON}")


def assemble(tree: Path, *, debs: DebianPackages, packages: Sequence[DebPackage],
             kernel: DebianKernel, keys: Sequence[Path], contents: RamdiskContents,
             project: Path, mtime: int) -> None:
    debs.unpack(packages, tree)
    _prune(tree)
    _links(tree)
    _ca_bundle(tree)
    _kernel_modules(tree, kernel, contents.kernel_modules)
    _kiln(tree, project, contents.kiln_packages)
    keys_dir = tree / "etc" / "kiln" / "keys"
    keys_dir.mkdir(parents=True)
    for key in sorted(keys):
        shutil.copyfile(key, keys_dir / key.name)
    for directory in ("proc", "sys", "dev", "run", "tmp", "root", "sysroot", "mnt"):
        (tree / directory).mkdir(exist_ok=True)
    (tree / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc" / "group").write_text("root:x:0:\ntty:x:5:\ndisk:x:6:\n")
    init = tree / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    _compile(tree, mtime)
    _normalise(tree, mtime)


def _prune(tree: Path) -> None:
    for relative in PRUNE:
        path = tree / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
    for pattern in PRUNE_GLOBS:
        for path in tree.glob(pattern):
            path.unlink()


def _links(tree: Path) -> None:
    (tree / "usr/bin/python3").symlink_to(PYTHON)
    if not (tree / "bin/sh").exists():
        (tree / "bin/sh").symlink_to("busybox")
    busybox = tree / "bin/busybox"
    applets = run([busybox, "--list"], timeout=60).text.split()
    present = {name for directory in PATH_DIRS if (tree / directory).is_dir()
               for name in os.listdir(tree / directory)}
    for applet in applets:
        if applet not in present:
            (tree / "bin" / applet).symlink_to("busybox")


def _ca_bundle(tree: Path) -> None:
    certificates = sorted((tree / "usr/share/ca-certificates").rglob("*.crt"))
    bundle = tree / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_bytes(b"".join(c.read_bytes().rstrip(b"\n") + b"\n" for c in certificates))


def _kernel_modules(tree: Path, kernel: DebianKernel, wanted: Sequence[str]) -> None:
    source = kernel.modules / "lib" / "modules" / kernel.version
    target = tree / "lib" / "modules" / kernel.version
    for path in module_closure(source, wanted):
        destination = target / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / path, destination)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    run(["depmod", "--basedir", tree, kernel.version], timeout=300)


def _kiln(tree: Path, project: Path, packages: Sequence[str]) -> None:
    site = tree / SITE
    for package in packages:
        shutil.copytree(project / package, site / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "README.md"))
    _dist_info(site, project, packages)
    kiln = tree / "usr/bin/kiln"
    kiln.write_text(f"#!/usr/bin/{PYTHON}\nimport sys\nfrom kiln.cli import main\n\n"
                    "sys.exit(main())\n")
    kiln.chmod(0o755)


def _dist_info(site: Path, project: Path, packages: Sequence[str]) -> None:
    """Metadata for importlib.metadata: the `kiln` command finds its subcommands by it."""


    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    version = pyproject["project"]["version"]
    info = site / f"kiln-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kiln\nVersion: {version}\n")
    commands = {
        name: target for name, target in
        pyproject["project"]["entry-points"]["kiln.commands"].items()
        if target.split(".")[0] in packages
    }
    parser = configparser.ConfigParser()
    parser["kiln.commands"] = commands
    parser["console_scripts"] = {"kiln": "kiln.cli:main"}
    with (info / "entry_points.txt").open("w") as handle:
        parser.write(handle)
    (info / "top_level.txt").write_text("\n".join(packages) + "\n")


def _compile(tree: Path, mtime: int) -> None:
    """Byte-compile with the same Python build the ramdisk runs (Debian's 3.11), with
    unchecked hashes so the .pyc bytes do not depend on when the sources were unpacked."""
    targets = [tree / "usr/lib/python3.11", tree / SITE]
    run([f"/usr/bin/{PYTHON}", "-m", "compileall", "-q", "-j0",
         "--invalidation-mode", "unchecked-hash", "-s", tree, "-p", "/",
         *targets], env={"PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": str(mtime)}, timeout=1800)


def _normalise(tree: Path, mtime: int) -> None:
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def tree_size(tree: Path) -> int:
    return sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def _elf_files(tree: Path) -> Iterator[Path]:
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".ko") \
                and is_elf(path):
            yield path


def check(tree: Path, contents: RamdiskContents) -> list[str]:
    """Everything the declaration promises is there, and every ELF file finds its libraries."""
    problems: list[str] = []
    for tool in contents.tools:
        if not any((tree / d / tool).exists() for d in PATH_DIRS):
            problems.append(f"tool {tool!r} is not on PATH")
    for platform in contents.grub_platforms:
        if not (tree / "usr/lib/grub" / platform / "modinfo.sh").is_file():
            problems.append(f"GRUB platform {platform!r} is missing (usr/lib/grub/{platform})")
    for module in contents.python_modules:
        top = module.split(".")[0]
        locations = [tree / "usr/lib/python3.11", tree / SITE,
                     tree / "usr/lib/python3.11/lib-dynload"]
        if not any((d / top).exists() or list(d.glob(f"{top}.*")) or list(d.glob(f"_{top}.*"))
                   for d in locations):
            problems.append(f"python module {module!r} is missing")
    libraries = {p.name for d in LIBRARY_DIRS if (tree / d).is_dir() for p in (tree / d).iterdir()}
    for path in _elf_files(tree):
        deps = read_deps(path)
        if deps is None:
            continue
        extra = set()
        for entry in deps.runpath:
            directory = entry.replace("$ORIGIN", str(path.parent.relative_to(tree)))
            if (tree / directory.lstrip("/")).is_dir():
                extra |= set(os.listdir(tree / directory.lstrip("/")))
        for needed in deps.needed:
            if needed not in libraries and needed not in extra:
                problems.append(f"{path.relative_to(tree)} needs {needed}, which is missing")
    return problems
