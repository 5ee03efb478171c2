"""Debian packages as build inputs: look them up, download them once, unpack them.

The ramdisk is assembled from Debian bookworm's own binary packages (`apt-get download` +
`dpkg-deb -x`, no maintainer scripts), so it runs exactly what Debian ships and tests. A
package is identified by name, version and the sha256 from the apt index; downloaded files
live in a cache directory and are checked against that sha256 before use.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.process import CommandError, run

log = logging.getLogger(__name__)

_FIELD = re.compile(r"^([A-Za-z0-9-]+):\s?(.*)$")


class PackageError(KilnError):
    pass


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    sha256: str
    depends: tuple[str, ...]  # package names only (alternatives: the first), versions dropped

    @property
    def file_name(self) -> str:
        version = self.version.replace(":", "%3a")
        return f"{self.name}_{version}_{self.architecture}.deb"


def _stanzas(text: str) -> list[dict[str, str]]:
    """The deb822 stanzas printed by `apt-cache show` (continuation lines folded)."""
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                stanzas.append(fields)
                fields = {}
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
            continue
        match = _FIELD.match(line)
        if match:
            key = match.group(1)
            fields[key] = match.group(2)
    return stanzas


def _depends(fields: dict[str, str]) -> tuple[str, ...]:
    names: list[str] = []
    for field in ("Pre-Depends", "Depends"):
        for clause in filter(None, (c.strip() for c in fields.get(field, "").split(","))):
            first = clause.split("|")[0].strip()
            names.append(first.split()[0].split(":")[0])
    return tuple(names)


def _package(fields: dict[str, str]) -> DebPackage:
    missing = {"Package", "Version", "Architecture", "SHA256"} - fields.keys()
    if missing:
        raise PackageError(
            f"apt-cache show {fields.get('Package')}: no {', '.join(sorted(missing))} field"
        )
    return DebPackage(
        name=fields["Package"], version=fields["Version"], architecture=fields["Architecture"],
        sha256=fields["SHA256"], depends=_depends(fields),
    )


def lookup_many(names: Sequence[str]) -> dict[str, DebPackage]:
    """The candidate versions of `names` in the apt index, in one apt-cache call."""
    if not names:
        return {}
    try:
        result = run(["apt-cache", "show", "--no-all-versions", *names], timeout=120)
    except CommandError as e:
        if len(names) > 1:  # find the culprit, so the error names it
            for name in names:
                lookup(name)
        raise PackageError(
            f"apt does not know the package {names[0]!r} (run apt-get update?): {e}"
        ) from e
    packages = {fields.get("Package", ""): fields for fields in _stanzas(result.text)}
    absent = [name for name in names if name not in packages]
    if absent:
        raise PackageError(f"apt-cache show printed nothing for {', '.join(absent)}")
    return {name: _package(packages[name]) for name in names}


def lookup(name: str) -> DebPackage:
    """The candidate version of `name` in the apt index."""
    return lookup_many([name])[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


class DebianPackages:
    """A cache directory of downloaded `.deb` files."""

    def __init__(self, cache: Path):
        self.cache = cache

    def fetch(self, names: Sequence[str]) -> list[DebPackage]:
        """Look up and download `names` (only what the cache lacks); verify every file."""
        found = lookup_many(names)
        packages = [found[name] for name in names]
        self.cache.mkdir(parents=True, exist_ok=True)
        wanted = [p for p in packages if not self._cached(p)]
        if wanted:
            log.info("downloading %d Debian packages", len(wanted))
            run(["apt-get", "download", *(f"{p.name}={p.version}" for p in wanted)],
                cwd=self.cache, timeout=1800)
        for package in packages:
            path = self.path(package)
            if not path.exists():
                raise PackageError(f"apt-get download did not produce {path.name}")
            if _sha256(path) != package.sha256:
                path.unlink()
                raise PackageError(f"{path.name}: sha256 differs from the apt index; removed")
        return packages

    def path(self, package: DebPackage) -> Path:
        return self.cache / package.file_name

    def _cached(self, package: DebPackage) -> bool:
        path = self.path(package)
        return path.exists() and _sha256(path) == package.sha256

    def unpack(self, packages: Iterable[DebPackage], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for package in packages:
            run(["dpkg-deb", "--extract", self.path(package), dest], timeout=600)


@dataclass(frozen=True)
class DebianKernel:
    version: str  # e.g. 6.1.0-56-amd64
    vmlinuz: Path
    modules: Path  # the tree holding lib/modules/VERSION, with modules.dep made by depmod
    package: DebPackage


def kernel_package_name(meta: str = "linux-image-amd64") -> str:
    """The versioned kernel package the meta package points at."""
    for name in lookup(meta).depends:
        if name.startswith("linux-image-"):
            return name
    raise PackageError(f"{meta} depends on no linux-image package")


def fetch_kernel(packages: DebianPackages, work: Path) -> DebianKernel:
    """Debian's current kernel, unpacked under `work`, with depmod run (the .deb has no
    modules.dep). Reuses an earlier unpack of the same package version."""
    [package] = packages.fetch([kernel_package_name()])
    root = work / f"kernel-{package.version}"
    stamp = root / ".unpacked"
    if not stamp.exists():
        packages.unpack([package], root)
        stamp.write_text(package.sha256)
    [modules_dir] = sorted((root / "lib" / "modules").iterdir())
    version = modules_dir.name
    if not (modules_dir / "modules.dep").exists():
        run(["depmod", "--basedir", root, version], timeout=600)
    return DebianKernel(
        version=version, vmlinuz=root / "boot" / f"vmlinuz-{version}", modules=root,
        package=package,
    )
