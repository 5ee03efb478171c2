"""`kiln image …`: keygen, build, inspect, verify, extract, push."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.image.builder import DEFAULT_LEVEL, ImageSpec, build_image
from kiln.image.extract import extract
from kiln.image.manifest import DEFAULT_FRAME_SIZE
from kiln.image.reader import ImageReader, read_envelope
from kiln.image.signing import TrustStore, generate_keypair, load_signing_key
from kiln.image.source import open_source
from kiln.progress import Progress, format_bytes

if TYPE_CHECKING:
    from kiln.cli import CommandTree

_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16M, 65536)")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]
    return int(match.group(1)) * scale


def add_commands(tree: CommandTree) -> None:
    image = tree.group("image", "build, sign, inspect, verify and extract .upd images")

    keygen = image.add_parser("keygen", help="make an Ed25519 signing key pair")
    keygen.add_argument("prefix", type=Path, help="writes PREFIX.key (private) and PREFIX.pub")
    keygen.set_defaults(handler=_keygen)

    build = image.add_parser("build", help="build a signed image from a root filesystem tree")
    build.add_argument("rootfs", type=Path, metavar="ROOTFS_DIR")
    build.add_argument("-o", "--output", type=Path, required=True, help="the .upd to write")
    build.add_argument("-k", "--key", type=Path, action="append", required=True,
                       help="private signing key (repeat to sign with several)")
    build.add_argument("--product", required=True)
    build.add_argument("--version", required=True, help="dotted numeric, e.g. 2.1.0")
    build.add_argument("--build", type=int, default=0, help="build number (default 0)")
    build.add_argument("--variant", action="append", dest="variants", default=None,
                       help="compatible hardware variant (repeat; default '*': any)")
    build.add_argument("--description", default="")
    build.add_argument("--frame-size", type=parse_size, default=DEFAULT_FRAME_SIZE,
                       help="uncompressed bytes per frame (default 8M)")
    build.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd level (1-22)")
    build.add_argument("--threads", type=int, default=0, help="compression threads (0: all)")
    build.set_defaults(handler=_build)

    inspect = image.add_parser("inspect", help="print an image's manifest as JSON")
    inspect.add_argument("source", metavar="FILE_OR_URL")
    inspect.add_argument("--trust", type=Path, action="append", default=[],
                         help="also check the signature against these keys")
    inspect.set_defaults(handler=_inspect)

    verify = image.add_parser("verify", help="check the signature and every frame")
    verify.add_argument("source", metavar="FILE_OR_URL")
    _trust_argument(verify)
    verify.set_defaults(handler=_verify)

    extract_ = image.add_parser("extract", help="verify and extract a rootfs image into DEST")
    extract_.add_argument("source", metavar="FILE_OR_URL")
    extract_.add_argument("dest", type=Path, metavar="DEST")
    _trust_argument(extract_)
    extract_.set_defaults(handler=_extract)

    push = image.add_parser("push", help="upload a signed image to a Kiln server")
    push.add_argument("file", type=Path, metavar="FILE")
    push.add_argument("--server", required=True, metavar="URL",
                      help="the server's base URL, e.g. https://kiln.example:8443")
    push.add_argument("--token", default=None,
                      help="API token with the images:write scope (default: $KILN_TOKEN)")
    push.add_argument("--ca-cert", type=Path, default=None, metavar="PEM",
                      help="verify the server's TLS certificate against this CA")
    push.set_defaults(handler=_push)


def _push(arguments: argparse.Namespace) -> int:
    # Imported here: requests costs start-up time the appliance's commands should not pay.
    from kiln.image.push import push_image, summary, target_from  # noqa: PLC0415

    target = target_from(arguments.server, token=arguments.token, ca_cert=arguments.ca_cert)
    with Progress("push") as progress:
        result = push_image(arguments.file, target, progress=progress)
    print(summary(result))
    return 0


def _trust_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust", type=Path, action="append", required=True,
                        help="trusted public key file or directory of them (repeatable)")


def _keygen(arguments: argparse.Namespace) -> int:
    prefix: Path = arguments.prefix
    private, public = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    key_id = generate_keypair(private, public)
    print(json.dumps({"key_id": key_id, "private": str(private), "public": str(public)}))
    return 0


def _build(arguments: argparse.Namespace) -> int:
    spec = ImageSpec(
        product=arguments.product, version=arguments.version, build=arguments.build,
        variants=tuple(arguments.variants or ["*"]), description=arguments.description,
        frame_size=arguments.frame_size, level=arguments.level, threads=arguments.threads,
    )
    keys = [load_signing_key(path) for path in arguments.key]
    with Progress("build") as progress:
        manifest = build_image(arguments.rootfs, arguments.output, spec=spec, keys=keys,
                               progress=progress)
    print(json.dumps({
        "output": str(arguments.output), "product": manifest.product,
        "version": manifest.version, "build": manifest.build, "frames": len(manifest.frames),
        "payload_size": manifest.payload_size, "compressed_size": manifest.compressed_size,
    }))
    return 0


def _inspect(arguments: argparse.Namespace) -> int:
    source = open_source(arguments.source)
    try:
        envelope = read_envelope(source)
        document: dict[str, Any] = {
            "image_id": envelope.image_id,
            "signatures": [s.key_id for s in envelope.signatures],
        }
        if arguments.trust:
            document["verified_by"] = envelope.verify(TrustStore.from_paths(arguments.trust))
        manifest = json.loads(envelope.manifest_text)
        envelope.parse_manifest()  # a malformed manifest is an error, shown with every problem
    finally:
        source.close()
    json.dump({**document, "manifest": manifest}, sys.stdout, indent=2)
    print()
    return 0


def _verify(arguments: argparse.Namespace) -> int:
    trust = TrustStore.from_paths(arguments.trust)
    with ImageReader.open(arguments.source, trust) as reader:
        manifest = reader.manifest
        with Progress("verify", total=manifest.compressed_size) as progress:
            reader.verify(progress=progress)
    print(
        f"OK {manifest.label}: signed by {reader.key_id}, {len(manifest.frames)} frames, "
        f"{format_bytes(manifest.compressed_size)} verified"
    )
    return 0


def _extract(arguments: argparse.Namespace) -> int:
    trust = TrustStore.from_paths(arguments.trust)
    with (
        ImageReader.open(arguments.source, trust) as reader,
        Progress("extract", total=reader.manifest.payload_size) as progress,
    ):
        result = extract(reader, arguments.dest, progress=progress)
    print(
        f"OK {reader.manifest.label}: {result.members} members, "
        f"{format_bytes(result.payload_bytes)} into {arguments.dest}"
    )
    return 0
