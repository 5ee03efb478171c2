"""Kernel modules of a kernel tree, read from the files depmod wrote (no modprobe needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kiln.errors import KilnError


class ModuleError(KilnError):
    pass


def module_name(path: str) -> str:
    """`kernel/fs/ext4/ext4.ko.xz` → `ext4`; dashes and underscores are the same name."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def module_closure(modules_dir: Path, names: Sequence[str], *, softdeps: bool = True
                   ) -> list[str]:
    """The modules `names` need, in load order, as paths relative to `modules_dir`
    (`lib/modules/VERSION`). Built-in modules and repeats are skipped; with `softdeps`, the
    `pre:` soft dependencies that name real modules come along. An unknown name is an error."""
    dep_file = modules_dir / "modules.dep"
    if not dep_file.exists():
        raise ModuleError(f"{dep_file} is missing: run depmod for this kernel tree")
    depends: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in _lines(dep_file):
        module, _, rest = line.partition(":")
        depends[module] = rest.split()
        by_name[module_name(module)] = module
    builtin = {module_name(line) for line in _lines(modules_dir / "modules.builtin")}
    soft: dict[str, list[str]] = {}
    for line in _lines(modules_dir / "modules.softdep") if softdeps else []:
        words = line.split()
        if len(words) > 2 and words[0] == "softdep" and "pre:" in words:
            pre = words[words.index("pre:") + 1:]
            pre = pre[:pre.index("post:")] if "post:" in pre else pre
            soft[words[1].replace("-", "_")] = [w.replace("-", "_") for w in pre]
    order: list[str] = []

    def add(name: str, *, required: bool) -> None:
        key = name.replace("-", "_")
        if key in builtin:
            return
        if key not in by_name:
            if required:
                raise ModuleError(f"no kernel module {name!r} in {modules_dir}")
            return
        for dependency in soft.get(key, []):
            add(dependency, required=False)
        module = by_name[key]
        # modules.dep lists a module's dependencies so that the last one must load first.
        for needed in [*reversed(depends[module]), module]:
            if needed not in order:
                order.append(needed)

    for name in names:
        add(name, required=True)
    return order
