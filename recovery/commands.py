"""`kiln recovery …`: look at and tend the image store on a RECOVERY volume."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.image.signing import TrustStore
from kiln.progress import Progress
from recovery.layout import RecoveryLayout
from recovery.store import ImageStore, describe

if TYPE_CHECKING:
    from kiln.cli import CommandTree


def add_commands(tree: CommandTree) -> None:
    recovery = tree.group("recovery", "list, add, check and prune images on a RECOVERY volume")

    images = recovery.add_parser("images", help="list images newest first, and quarantined ones")
    _common(images)
    images.set_defaults(handler=_images)

    add = recovery.add_parser("add", help="copy an image (path or URL) in, verified, resumable")
    _common(add)
    add.add_argument("source", metavar="FILE_OR_URL")
    add.set_defaults(handler=_add)

    pick = recovery.add_parser("pick", help="the image a factory restore would use now")
    _common(pick)
    pick.add_argument("--variant", help="hardware variant of this unit")
    pick.set_defaults(handler=_pick)

    prune = recovery.add_parser("prune", help="keep the newest N usable images and the factory one")
    _common(prune)
    prune.add_argument("--keep", type=int, default=2)
    prune.set_defaults(handler=_prune)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, metavar="RECOVERY_DIR", help="RECOVERY's mount point")
    parser.add_argument("--trust", type=Path, action="append",
                        help="trusted public key or directory (default: RECOVERY_DIR/keys)")


def _store(arguments: argparse.Namespace) -> ImageStore:
    trust = TrustStore.from_paths(arguments.trust or [RecoveryLayout(arguments.root).keys])
    return ImageStore(arguments.root, trust)


def _print(value: object) -> None:
    print(json.dumps(value, indent=2))


def _images(arguments: argparse.Namespace) -> int:
    store = _store(arguments)
    images, skipped = store.scan()
    records = store.history.records()
    _print({
        "factory_image": store.history.factory_image(),
        "images": [
            {**describe(image), "history": records[image.image_id].to_json()}
            if image.image_id in records else describe(image)
            for image in images
        ],
        "skipped": [{"file": s.path.name, "reason": s.reason} for s in skipped],
        "quarantined": [{"file": p.name, "reason": r} for p, r in store.quarantined()],
    })
    return 0


def _add(arguments: argparse.Namespace) -> int:
    store = _store(arguments)
    with Progress("add") as progress:
        image = store.add(arguments.source, progress=progress)
    _print(describe(image))
    return 0


def _pick(arguments: argparse.Namespace) -> int:
    _print(describe(_store(arguments).pick(variant=arguments.variant)))
    return 0


def _prune(arguments: argparse.Namespace) -> int:
    result = _store(arguments).prune(keep=arguments.keep)
    _print({
        "kept": [i.path.name for i in result.kept],
        "removed": [i.path.name for i in result.removed],
        "removed_quarantined": [p.name for p in result.removed_quarantine],
    })
    return 0
