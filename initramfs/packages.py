"""Resolve the ramdisk's Debian packages: the declared roots and their dependencies."""

from __future__ import annotations

from initramfs.contents import RamdiskContents
from initramfs.debian import DebPackage, PackageError, lookup_many


def resolve(contents: RamdiskContents) -> list[DebPackage]:
    """The dependency closure of `contents.debian_packages`, minus the exclusions, by name."""
    excluded = set(contents.excluded_packages)
    providers = dict(contents.virtual_providers)
    found: dict[str, DebPackage] = {}
    wanted = list(contents.debian_packages)
    while wanted:
        names = sorted({providers.get(name, name) for name in wanted} - excluded - found.keys())
        try:
            level = lookup_many(names)
        except PackageError as e:
            raise PackageError(
                f"{e}\nIf it is a virtual package, name its provider in "
                "initramfs/contents.py (virtual_providers)"
            ) from e
        found.update(level)
        wanted = [dependency for package in level.values() for dependency in package.depends]
    return sorted(found.values(), key=lambda package: package.name)
