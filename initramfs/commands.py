"""`kiln initramfs build`: build (or reuse) the Kiln ramdisk and its kernel."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from initramfs.builder import build_ramdisk

if TYPE_CHECKING:
    from kiln.cli import CommandTree


def add_commands(tree: CommandTree) -> None:
    initramfs = tree.group("initramfs", "build the Kiln ramdisk (kernel + initramfs)")
    build = initramfs.add_parser(
        "build", help="build vmlinuz and initrd.zst from Debian packages (cached by inputs)"
    )
    build.add_argument("--out", type=Path, required=True, help="directory for the results")
    build.add_argument("--trust", type=Path, action="append", required=True,
                       help="image-signing public key to bake in (repeatable)")
    build.add_argument("--cache", type=Path, help="download/build cache (default ~/.cache/kiln)")
    build.set_defaults(handler=_build)


def _build(arguments: argparse.Namespace) -> int:
    build = build_ramdisk(keys=arguments.trust, cache=arguments.cache, out=arguments.out)
    info = {k: v for k, v in build.info.items() if k != "packages"}
    print(json.dumps({"kernel": str(build.kernel), "initrd": str(build.initrd), **info},
                     indent=2))
    return 0
