"""The buildroot tree (`buildroot/`, a BR2_EXTERNAL) checked against the one declaration.

`initramfs/contents.py` says what a ramdisk must contain; the Debian builder installs it, and
this module proves the buildroot tree provides the same: each declared tool and Python module
maps to the buildroot symbols that provide it (which the defconfig must set =y), each kernel
module to its CONFIG_ symbol (which the kernel fragment must set =y). A mapping entry with no
declared item is an error too, so a dependency added on one side only fails. The same tables
name the Debian package behind each item, to keep `debian_packages` honest. Nothing here runs
buildroot: the tree is checked, not built (tests/buildroot adds the checks of its Kconfig
and package files). `python -m initramfs.buildroot` runs `check`, and the two build helpers
the tree calls: `pyproject` (package/kiln) and `init-script` (board/kiln/post-build.sh).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from initramfs.contents import CONTENTS, RamdiskContents
from initramfs.staging import init_script
from kiln.errors import KilnError

BUILDROOT_VERSION = "2026.02.3"
DEFCONFIG = "configs/kiln_x86_64_defconfig"
FRAGMENT = "board/kiln/linux.fragment"
KILN_SYMBOL = "BR2_PACKAGE_KILN"  # installs CONTENTS.kiln_packages (package/kiln)


class BuildrootTreeError(KilnError):
    pass


@dataclass(frozen=True)
class Provider:
    """Where a declared item comes from: buildroot symbols that must all be =y, and the Debian
    package that ships it, itself declared or (`via`) a dependency of a declared package."""

    symbols: tuple[str, ...]
    debian: str | None
    via: str | None = None


def _br(*symbols: str, debian: str, via: str | None = None) -> Provider:
    return Provider(tuple(f"BR2_PACKAGE_{s}" for s in symbols), debian, via)


TOOLS: Mapping[str, Provider] = {
    "sh": Provider(("BR2_PACKAGE_BUSYBOX", "BR2_SYSTEM_BIN_SH_BUSYBOX"), "busybox-static"),
    "mount": _br("UTIL_LINUX", "UTIL_LINUX_MOUNT", debian="mount"),
    "umount": _br("UTIL_LINUX", "UTIL_LINUX_MOUNT", debian="mount"),
    "switch_root": _br("UTIL_LINUX", "UTIL_LINUX_SWITCH_ROOT", debian="util-linux"),
    "modprobe": _br("KMOD", "KMOD_TOOLS", debian="kmod"),
    "udevadm": Provider(("BR2_ROOTFS_DEVICE_CREATION_DYNAMIC_EUDEV", "BR2_PACKAGE_EUDEV"), "udev"),
    "blkid": _br("UTIL_LINUX", "UTIL_LINUX_BINARIES", debian="util-linux"),
    "lsblk": _br("UTIL_LINUX", "UTIL_LINUX_BINARIES", debian="util-linux"),
    "sfdisk": _br("UTIL_LINUX", "UTIL_LINUX_BINARIES", debian="fdisk"),
    "partx": _br("UTIL_LINUX", "UTIL_LINUX_PARTX", debian="util-linux"),
    "wipefs": _br("UTIL_LINUX", "UTIL_LINUX_WIPEFS", debian="util-linux"),
    "mkfs.ext4": _br("E2FSPROGS", debian="e2fsprogs"),
    "e2fsck": _br("E2FSPROGS", debian="e2fsprogs"),
    "mkfs.vfat": _br("DOSFSTOOLS", "DOSFSTOOLS_MKFS_FAT", debian="dosfstools"),
    "efibootmgr": _br("EFIBOOTMGR", debian="efibootmgr"),
    "nvme": _br("NVME", debian="nvme-cli"),
    "hdparm": _br("HDPARM", debian="hdparm"),
    "tar": _br("TAR", debian="tar"),
    "zstd": _br("ZSTD", debian="zstd"),
    "dmidecode": _br("DMIDECODE", debian="dmidecode", via="python3-parted"),  # libparted2
    # grub2 with its tools installed on the target (boot/grub2 in buildroot, not a package).
    "grub-mkimage": Provider(("BR2_TARGET_GRUB2", "BR2_TARGET_GRUB2_INSTALL_TOOLS"),
                             "grub-common"),
    "grub-mkstandalone": Provider(("BR2_TARGET_GRUB2", "BR2_TARGET_GRUB2_INSTALL_TOOLS"),
                                  "grub-common"),
}
# GRUB platform -> what builds it (with the tools, its modules land in /usr/lib/grub/).
GRUB_PLATFORMS: Mapping[str, Provider] = {
    "i386-pc": Provider(("BR2_TARGET_GRUB2", "BR2_TARGET_GRUB2_I386_PC"), "grub-pc-bin"),
    "x86_64-efi": Provider(("BR2_TARGET_GRUB2", "BR2_TARGET_GRUB2_X86_64_EFI"),
                           "grub-efi-amd64-bin"),
}
# The project's own modules (top level in kiln_packages) need only KILN_SYMBOL.
PYTHON_MODULES: Mapping[str, Provider] = {
    "pyudev": _br("PYTHON_PYUDEV", debian="python3-pyudev"),
    "parted": _br("PYTHON_PYPARTED", debian="python3-parted"),
    "pyroute2": _br("PYTHON_PYROUTE2", debian="python3-pyroute2"),
    "requests": _br("PYTHON_REQUESTS", debian="python3-requests"),
    "cryptography.hazmat.primitives.asymmetric.ed25519":
        _br("PYTHON_CRYPTOGRAPHY", debian="python3-cryptography"),
    "zstandard": _br("PYTHON_ZSTANDARD", debian="python3-zstandard"),  # package/python-zstandard
    "sqlite3": _br("PYTHON3", "PYTHON3_SQLITE", debian="libpython3.11-stdlib"),
    "ssl": _br("PYTHON3", "PYTHON3_SSL", debian="libpython3.11-minimal", via="python3.11-minimal"),
    "ctypes": _br("PYTHON3", debian="libpython3.11-stdlib"),  # python3 always builds libffi
    "json": _br("PYTHON3", debian="libpython3.11-stdlib"),
    "hashlib": _br("PYTHON3", "PYTHON3_SSL", debian="libpython3.11-minimal",
                   via="python3.11-minimal"),  # _hashlib, OpenSSL's digests
}
# Debian packages in CONTENTS.debian_packages that provide no declared item, on purpose.
DEBIAN_ONLY = ("ca-certificates",)  # buildroot: requests uses python-certifi's bundle
KERNEL_MODULES: Mapping[str, str] = {
    "virtio_pci": "VIRTIO_PCI", "virtio_blk": "VIRTIO_BLK", "virtio_scsi": "SCSI_VIRTIO",
    "virtio_net": "VIRTIO_NET", "virtio_rng": "HW_RANDOM_VIRTIO", "ahci": "SATA_AHCI",
    "sd_mod": "BLK_DEV_SD", "sr_mod": "BLK_DEV_SR", "nvme": "BLK_DEV_NVME",
    "usb_storage": "USB_STORAGE", "uas": "USB_UAS", "xhci_pci": "USB_XHCI_PCI",
    "ehci_pci": "USB_EHCI_PCI", "usbhid": "USB_HID", "hid_generic": "HID_GENERIC",
    "e1000": "E1000", "e1000e": "E1000E", "ext4": "EXT4_FS", "crc32c_generic": "CRYPTO_CRC32C",
    "crc32c_intel": "CRYPTO_CRC32C_INTEL", "vfat": "VFAT_FS", "nls_cp437": "NLS_CODEPAGE_437",
    "nls_iso8859_1": "NLS_ISO8859_1", "nls_utf8": "NLS_UTF8", "efivarfs": "EFIVAR_FS",
    "loop": "BLK_DEV_LOOP",
}  # module name -> CONFIG_<symbol> (Linux 6.1)
# Not declared items, but what the image is: the kernel and the system around PID 1.
KERNEL_ESSENTIALS = ("CONFIG_EFI_STUB", "CONFIG_BLK_DEV_INITRD", "CONFIG_RD_ZSTD",
                     "CONFIG_DEVTMPFS", "CONFIG_SERIAL_8250_CONSOLE")
ESSENTIALS = ("BR2_x86_64", "BR2_INIT_NONE", "BR2_LINUX_KERNEL_CUSTOM_VERSION",
              "BR2_LINUX_KERNEL_BZIMAGE", "BR2_TARGET_ROOTFS_CPIO_ZSTD", KILN_SYMBOL)
# Kconfig drops a value whose `depends on` is unmet without a word: the ones that bite here.
DEPENDS: Mapping[str, tuple[str, ...]] = {
    "BR2_PACKAGE_EUDEV": ("BR2_ROOTFS_DEVICE_CREATION_DYNAMIC_EUDEV",),
    "BR2_PACKAGE_PYTHON_PYUDEV": ("BR2_PACKAGE_EUDEV",),  # BR2_PACKAGE_HAS_UDEV
    "BR2_PACKAGE_PYTHON_PYPARTED": ("BR2_TOOLCHAIN_BUILDROOT_GLIBC",),  # locale, wchar
    KILN_SYMBOL: ("BR2_PACKAGE_PYTHON3", "BR2_PACKAGE_EUDEV", "BR2_TOOLCHAIN_BUILDROOT_GLIBC"),
    "BR2_LINUX_KERNEL_CUSTOM_VERSION": ("BR2_LINUX_KERNEL",),
    "BR2_LINUX_KERNEL_BZIMAGE": ("BR2_LINUX_KERNEL",),
    "BR2_TARGET_ROOTFS_CPIO_ZSTD": ("BR2_TARGET_ROOTFS_CPIO",),
    "BR2_SYSTEM_BIN_SH_BUSYBOX": ("BR2_PACKAGE_BUSYBOX",),
    "BR2_PACKAGE_KMOD_TOOLS": ("BR2_PACKAGE_KMOD",),
    "BR2_PACKAGE_DOSFSTOOLS_MKFS_FAT": ("BR2_PACKAGE_DOSFSTOOLS",),
    "BR2_TARGET_GRUB2_INSTALL_TOOLS": ("BR2_TARGET_GRUB2",),
    "BR2_TARGET_GRUB2_I386_PC": ("BR2_TARGET_GRUB2",),
    "BR2_TARGET_GRUB2_X86_64_EFI": ("BR2_TARGET_GRUB2",),
}
# The tree's own files the defconfig must name.
FILES = {"BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES": FRAGMENT,
         "BR2_ROOTFS_POST_BUILD_SCRIPT": "board/kiln/post-build.sh",
         "BR2_ROOTFS_DEVICE_TABLE": "board/kiln/device_table.txt"}
DEPENDS_PREFIXES = (("BR2_PACKAGE_PYTHON3_", "BR2_PACKAGE_PYTHON3"),
                    ("BR2_PACKAGE_PYTHON_", "BR2_PACKAGE_PYTHON3"),
                    ("BR2_PACKAGE_UTIL_LINUX_", "BR2_PACKAGE_UTIL_LINUX"))

_ASSIGN = re.compile(r"([A-Za-z0-9_]+)=(.*)")
_NOT_SET = re.compile(r"# ([A-Za-z0-9_]+) is not set")
_MAKE_VAR = re.compile(r"([A-Z0-9_]+)\s*[:+?]?=\s*(.*)")


def read_config(path: Path) -> dict[str, str]:
    """`SYMBOL=value` and `# SYMBOL is not set` (as "n") lines of a defconfig or fragment."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if unset := _NOT_SET.fullmatch(line):
            symbol, value = unset[1], "n"
        elif not line or line.startswith("#"):
            continue
        elif assignment := _ASSIGN.fullmatch(line):
            symbol, value = assignment[1], assignment[2]
        else:
            raise BuildrootTreeError(f"{path}:{number}: not a Kconfig assignment: {line!r}")
        if symbol in values:
            raise BuildrootTreeError(f"{path}:{number}: {symbol} is set twice")
        values[symbol] = value
    return values


def read_make_variables(path: Path) -> dict[str, str]:
    """Top-level `NAME = value` assignments of a package .mk (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    text = re.sub(r"(?ms)^define .*?^endef", "", text)
    found = (_MAKE_VAR.fullmatch(line.strip()) for line in text.splitlines())
    return {m[1]: m[2].strip() for m in found if m}


def check_parity(tree: Path, contents: RamdiskContents = CONTENTS, *,
                 tools: Mapping[str, Provider] = TOOLS,
                 python_modules: Mapping[str, Provider] = PYTHON_MODULES,
                 kernel_modules: Mapping[str, str] = KERNEL_MODULES,
                 grub_platforms: Mapping[str, Provider] = GRUB_PLATFORMS) -> list[str]:
    """Problems where the declaration, the tables above, the defconfig and the kernel
    fragment of the external tree at `tree` disagree; none when they agree."""
    defconfig, fragment = read_config(tree / DEFCONFIG), read_config(tree / FRAGMENT)
    own = [m for m in contents.python_modules if m.split(".")[0] in contents.kiln_packages]
    third_party = [m for m in contents.python_modules if m not in own]
    problems: list[str] = []
    for kind, declared, table in (("tool", contents.tools, tools),
                                  ("python module", third_party, python_modules),
                                  ("GRUB platform", contents.grub_platforms, grub_platforms)):
        for item in declared:
            if item not in table:
                problems.append(f"{kind} {item!r} is declared in initramfs/contents.py, but "
                                "initramfs/buildroot.py does not say what provides it")
            for symbol in table[item].symbols if item in table else ():
                problems += _need(defconfig, symbol, where=DEFCONFIG, why=f"{kind} {item!r}")
        for item, provider in table.items():
            root = provider.via or provider.debian
            if item not in declared:
                problems.append(f"initramfs/buildroot.py maps {kind} {item!r}, which "
                                "initramfs/contents.py does not declare")
            elif root is not None and root not in contents.debian_packages:
                problems.append(f"{kind} {item!r} comes from Debian's {provider.debian}, but "
                                f"debian_packages does not name {root}")
    for module in own:
        problems += _need(defconfig, KILN_SYMBOL, where=DEFCONFIG,
                          why=f"python module {module!r}")
    for module in contents.kernel_modules:
        if module not in kernel_modules:
            problems.append(f"kernel module {module!r} is declared in initramfs/contents.py, "
                            "but initramfs/buildroot.py names no CONFIG_ symbol for it")
        else:
            problems += _need(fragment, f"CONFIG_{kernel_modules[module]}", where=FRAGMENT,
                              why=f"kernel module {module!r}")
    problems += [f"initramfs/buildroot.py maps kernel module {module!r}, which "
                 "initramfs/contents.py does not declare"
                 for module in kernel_modules if module not in contents.kernel_modules]
    providers = {p.via or p.debian for p in (*tools.values(), *python_modules.values(),
                                             *grub_platforms.values())}
    problems += [f"Debian package {package!r} provides nothing initramfs/contents.py "
                 "declares: declare what it is for, so that buildroot must provide it too"
                 for package in contents.debian_packages
                 if package not in providers and package not in DEBIAN_ONLY]
    return problems + _configured(tree, defconfig=defconfig, fragment=fragment)


def _need(config: Mapping[str, str], symbol: str, *, where: str, why: str) -> list[str]:
    value = config.get(symbol, "unset")
    return [] if value == "y" else [f"{why} needs {symbol}=y in {where} (it is {value})"]


def _configured(tree: Path, *, defconfig: Mapping[str, str], fragment: Mapping[str, str]
                ) -> list[str]:
    """What the image is, Kconfig dependencies, the tree's files, the kiln package's version."""
    problems = [p for s in KERNEL_ESSENTIALS
                for p in _need(fragment, s, where=FRAGMENT, why="the kernel")]
    problems += [p for s in ESSENTIALS
                 for p in _need(defconfig, s, where=DEFCONFIG, why="the ramdisk")]
    for symbol, value in defconfig.items():
        parents = [*DEPENDS.get(symbol, ()),
                   *(parent for prefix, parent in DEPENDS_PREFIXES if symbol.startswith(prefix))]
        for parent in parents if value == "y" else ():
            problems += _need(defconfig, parent, where=DEFCONFIG,
                              why=f"{symbol}=y (Kconfig drops it otherwise)")
    for symbol, path in FILES.items():
        if f"$(BR2_EXTERNAL_KILN_PATH)/{path}" not in defconfig.get(symbol, "").strip('"').split():
            problems.append(f"{DEFCONFIG}: {symbol} does not name "
                            f"$(BR2_EXTERNAL_KILN_PATH)/{path}")
    project = tomllib.loads((tree.parent / "pyproject.toml").read_text())["project"]
    version = read_make_variables(tree / "package/kiln/kiln.mk").get("KILN_VERSION")
    if version != project["version"]:
        problems.append(f"package/kiln/kiln.mk: KILN_VERSION = {version}, but pyproject.toml "
                        f"says {project['version']}")
    return problems


def appliance_pyproject(pyproject: str, packages: Sequence[str]) -> str:
    """The checkout's pyproject.toml cut down to `packages` and the entry points they provide:
    what package/kiln builds its wheel from. Dependencies are buildroot packages instead."""
    data = tomllib.loads(pyproject)
    project, system = data["project"], data["build-system"]

    def ours(table: Mapping[str, str]) -> list[str]:
        return [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items()
                if v.split(".")[0].split(":")[0] in packages]

    return "\n".join([
        "# Made by `python -m initramfs.buildroot pyproject` for buildroot: do not edit.",
        "[build-system]", f"requires = {json.dumps(system['requires'])}",
        f"build-backend = {json.dumps(system['build-backend'])}", "", "[project]",
        *(f"{key} = {json.dumps(project[key])}" for key in ("name", "version",
                                                            "requires-python")),
        "", "[project.scripts]", *ours(project.get("scripts", {})),
        "", '[project.entry-points."kiln.commands"]',
        *ours(project.get("entry-points", {}).get("kiln.commands", {})),
        "", "[tool.setuptools.packages.find]",
        f"include = {json.dumps([n for p in packages for n in (p, f'{p}.*')])}",
        "", "[tool.setuptools.package-data]", '"*" = ["py.typed"]', "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m initramfs.buildroot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pyproject", help="print the appliance-only pyproject.toml").add_argument(
        "pyproject", type=Path)
    commands.add_parser("init-script", help="print /init").add_argument("python")
    commands.add_parser("check", help="check buildroot/ against initramfs/contents.py")
    arguments = parser.parse_args(argv)
    if arguments.command == "pyproject":
        text = appliance_pyproject(arguments.pyproject.read_text(), CONTENTS.kiln_packages)
    elif arguments.command == "init-script":
        text = init_script(arguments.python)
    else:
        problems = check_parity(Path(__file__).resolve().parent.parent / "buildroot")
        text = "".join(f"{problem}\n" for problem in problems) or "buildroot/ agrees\n"
        sys.stdout.write(text)
        return 1 if problems else 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
