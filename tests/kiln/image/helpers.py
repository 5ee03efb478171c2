"""Real bytes for image tests: frames, signed images, tar streams and trees to compare.

Nothing here stands in for the code under test: images are made with the same zstd library
and the real `encode_envelope`, tar streams with Python's `tarfile` (or crafted header blocks
where a test needs a stream no sane tool writes), and trees are compared through `lstat`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import stat
import struct
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import zstandard

from kiln.image.envelope import ENVELOPE_MARK, HEADER, SKIPPABLE_MAGIC, encode_envelope
from kiln.image.errors import ImageError
from kiln.image.manifest import Compression, Frame, Manifest, PayloadKind
from kiln.image.reader import ImageReader
from kiln.image.signing import SIGNING_CONTEXT, SigningKey

CREATED = "2026-11-01T00:00:00Z"
FRAME_SIZE = 65536


# --- frames and images -----------------------------------------------------------------------


def compress_frames(payload: bytes, frame_size: int, *, level: int = 3) -> list[bytes]:
    """The payload cut into `frame_size` pieces, each its own zstd frame (as the builder does)."""
    compressor = zstandard.ZstdCompressor(
        level=level, write_checksum=False, write_content_size=True
    )
    return [
        compressor.compress(payload[start:start + frame_size])
        for start in range(0, len(payload), frame_size)
    ]


def manifest_for(
    frames: Sequence[bytes], *, payload_size: int, frame_size: int, version: str = "1.0",
    build: int = 0, product: str = "demo", variants: tuple[str, ...] = ("*",),
) -> Manifest:
    entries: list[Frame] = []
    offset = 0
    for data in frames:
        entries.append(
            Frame(offset=offset, length=len(data), sha256=hashlib.sha256(data).hexdigest())
        )
        offset += len(data)
    return Manifest(
        product=product, version=version, build=build, created=CREATED, variants=variants,
        payload_kind=PayloadKind.ROOTFS_TAR, compression=Compression.ZSTD,
        payload_size=payload_size, frame_size=frame_size, frames=tuple(entries),
    )


@dataclass(frozen=True)
class BuiltImage:
    """A complete `.upd` in memory, with what went into it."""

    data: bytes
    manifest: Manifest
    payload: bytes
    frames: tuple[bytes, ...]
    envelope_size: int

    def frame_start(self, index: int) -> int:
        """Where frame `index` starts in the file."""
        return self.envelope_size + self.manifest.frames[index].offset

    def frame_end(self, index: int) -> int:
        frame = self.manifest.frames[index]
        return self.envelope_size + frame.offset + frame.length

    def write(self, path: Path) -> Path:
        path.write_bytes(self.data)
        return path


def assemble(
    manifest: Manifest, frames: Sequence[bytes], keys: Sequence[SigningKey],
    *, payload: bytes = b"",
) -> BuiltImage:
    """Sign `manifest` with the real envelope encoder and put `frames` after it."""
    envelope = encode_envelope(manifest, list(keys))
    return BuiltImage(
        data=envelope + b"".join(frames), manifest=manifest, payload=payload,
        frames=tuple(frames), envelope_size=len(envelope),
    )


def make_image_from_payload(
    payload: bytes, key: SigningKey | Sequence[SigningKey], frame_size: int = FRAME_SIZE,
    **fields: Any,
) -> BuiltImage:
    """A signed image whose payload is exactly `payload` (manifest fields overridable)."""
    keys = [key] if isinstance(key, SigningKey) else list(key)
    frames = compress_frames(payload, frame_size)
    manifest = manifest_for(frames, payload_size=len(payload), frame_size=frame_size)
    if fields:
        manifest = replace(manifest, **fields)
    return assemble(manifest, frames, keys, payload=payload)


def signed_envelope_for_text(text: str, keys: Sequence[SigningKey]) -> bytes:
    """An envelope whose manifest is any text at all, correctly signed: it reaches the parser."""
    message = SIGNING_CONTEXT + text.encode()
    body = json.dumps({
        "manifest": text,
        "signatures": [{"key_id": k.key_id, "ed25519": k.sign(message)} for k in keys],
    }).encode()
    content = ENVELOPE_MARK + body + b"\n"
    return HEADER.pack(SKIPPABLE_MAGIC, len(content)) + content


def silent_flip(frame: bytes, expected_size: int) -> int:
    """A position in `frame` where flipping a byte leaves a valid zstd frame of the same size.

    Such a change is invisible to zstd itself (the builder writes no zstd checksum): only the
    manifest's sha256 catches it, so a test using it fails if that check is removed.
    """
    middle = len(frame) // 2
    for distance in range(len(frame) // 2):
        for position in (middle + distance, middle - distance):
            changed = bytearray(frame)
            changed[position] ^= 0x20
            try:
                output = zstandard.ZstdDecompressor().decompress(
                    bytes(changed), max_output_size=expected_size
                )
            except zstandard.ZstdError:
                continue
            if len(output) == expected_size:
                return position
    raise AssertionError("no byte of this frame can change without breaking the zstd frame")


def flip(data: bytes, position: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 0x20
    return bytes(changed)


# --- tar streams -----------------------------------------------------------------------------


def entry(
    name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, linkname: str = "",
    mode: int = 0o644, pax: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.mtime = 1_700_000_000
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def tar_bytes(
    *entries: tuple[tarfile.TarInfo, bytes], tar_format: Literal[0, 1, 2] = tarfile.PAX_FORMAT
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def members(
    *entries: tuple[tarfile.TarInfo, bytes], tar_format: Literal[0, 1, 2] = tarfile.PAX_FORMAT
) -> bytes:
    """Member headers and data as `tarfile` writes them, without the end-of-archive marker."""
    return b"".join(info.tobuf(tar_format) + padded(data) for info, data in entries)


def random_files(sizes: Sequence[int], *, seed: int = 7) -> list[tuple[str, bytes]]:
    """Incompressible files (zstd stores them nearly verbatim): frame positions stay exact."""
    generator = random.Random(seed)  # noqa: S311 - repeatable test data, not secrets
    return [(f"file{i:03d}", generator.randbytes(size)) for i, size in enumerate(sizes)]


@dataclass(frozen=True)
class Placed:
    """Where a member sits in the payload: its first header block to the end of its data."""

    name: str
    start: int
    end: int
    data: bytes = field(repr=False)


def tar_of_files(files: Iterable[tuple[str, bytes]]) -> tuple[bytes, dict[str, Placed]]:
    """A PAX tar of regular files, and where each member landed."""
    stream = tar_bytes(*(entry(name, data) for name, data in files))
    contents = dict(files)
    placed: dict[str, Placed] = {}
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as archive:
        for info in archive:
            placed[info.name] = Placed(
                name=info.name, start=info.offset, end=info.offset_data + info.size,
                data=contents[info.name],
            )
    return stream, placed


def header_block(
    name: str, size: int = 0, *, kind: bytes = tarfile.REGTYPE, linkname: str = "",
    tar_format: Literal[0, 1, 2] = tarfile.USTAR_FORMAT,
) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = linkname
    info.mtime = 1_700_000_000
    return info.tobuf(tar_format)


def with_field(block: bytes, start: int, value: bytes) -> bytes:
    """`block` with `value` written at `start` and a correct checksum again."""
    changed = bytearray(block)
    changed[start:start + len(value)] = value
    changed[148:156] = b" " * 8
    changed[148:156] = b"%06o\x00 " % sum(changed)
    return bytes(changed)


def padded(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 512)


def pax_block(records: dict[str, str], *, kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A pax extended header (`x`, or `g` for global) with its records, padded."""
    body = b""
    for key, value in records.items():
        text = f" {key}={value}\n".encode()
        length = len(text) + 1
        while len(str(length)) + len(text) != length:
            length = len(str(length)) + len(text)
        body += str(length).encode() + text
    return header_block("PaxHeaders/x", len(body), kind=kind) + padded(body)


END = b"\x00" * 1024


# --- trees -----------------------------------------------------------------------------------


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """A `system.posix_acl_access` value: (tag, permissions, id) entries, version 2."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ACL_UNDEFINED = 0xFFFFFFFF
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def make_rich_tree(root: Path) -> None:
    """Everything a root filesystem holds that a careless copy loses (needs root)."""
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("appliance\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chown(root / "etc" / "shadow", 0, 42)
    os.chmod(root / "etc" / "shadow", 0o640)
    (root / "usr" / "bin").mkdir(parents=True)
    passwd = root / "usr" / "bin" / "passwd"
    passwd.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    os.chmod(passwd, 0o4755)  # noqa: S103
    ping = root / "usr" / "bin" / "ping"
    ping.write_bytes(b"\x7fELF ping")
    os.chmod(ping, 0o755)  # noqa: S103
    # cap_net_raw+ep, set after any chown (a chown clears file capabilities)
    os.setxattr(ping, "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    (root / "usr" / "bin" / "wall").write_bytes(b"wall")
    os.chown(root / "usr" / "bin" / "wall", 0, 5)
    os.chmod(root / "usr" / "bin" / "wall", 0o2755)  # noqa: S103
    home = root / "home" / "op"
    home.mkdir(parents=True)
    os.chown(home, 1234, 5678)
    os.chmod(home, 0o700)
    note = home / "notes.txt"
    note.write_text("odd owner\n")
    os.chown(note, 1234, 5678)
    os.chmod(note, 0o600)
    os.setxattr(note, "user.kiln.comment", b"kept")
    os.setxattr(note, "trusted.kiln.overlay", b"\x00\x01binary")
    os.setxattr(note, "security.kiln.label", b"system_u:object_r:kiln_t")
    tmp = root / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)  # noqa: S103
    shared = root / "srv" / "shared"
    shared.mkdir(parents=True)
    os.setxattr(shared, "system.posix_acl_access", posix_acl(
        (ACL_USER_OBJ, 7, ACL_UNDEFINED), (ACL_USER, 5, 1234), (ACL_GROUP_OBJ, 5, ACL_UNDEFINED),
        (ACL_MASK, 5, ACL_UNDEFINED), (ACL_OTHER, 0, ACL_UNDEFINED),
    ))
    (root / "srv" / "empty").write_bytes(b"")
    (root / "srv" / "big").write_bytes(random.Random(1).randbytes(150_000))  # noqa: S311
    # links
    os.symlink("/usr/bin/passwd", root / "usr" / "bin" / "chpasswd")  # absolute target
    os.symlink("../etc/hostname", root / "srv" / "hostname")
    os.symlink("does/not/exist", root / "srv" / "dangling")
    os.lchown(root / "srv" / "dangling", 1234, 5678)
    os.link(root / "usr" / "bin" / "passwd", root / "usr" / "bin" / "passwd.hard")
    os.link(root / "usr" / "bin" / "passwd", root / "srv" / "passwd.hard2")
    # devices and a fifo
    dev = root / "dev"
    dev.mkdir()
    os.mknod(dev / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(dev / "sda", 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    os.chown(dev / "sda", 0, 6)
    os.mkfifo(dev / "initctl", 0o600)
    (root / "long" / ("d" * 120)).mkdir(parents=True)
    (root / "long" / ("d" * 120) / ("f" * 150)).write_text("long names\n")
    (root / "naïve ünïcode").write_text("utf-8 name\n")
    # timestamps last, children before parents (writing into a directory changes its mtime)
    stamp = 1_600_000_000_123_456_789
    paths = [*sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True), root]
    for number, path in enumerate(paths):
        os.utime(path, ns=(stamp, stamp + number * 1_000_000_007), follow_symlinks=False)


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    content: str  # sha256 of a file, target of a symlink, major:minor of a device
    xattrs: tuple[tuple[str, bytes], ...]
    links: tuple[str, ...]  # every path in the tree sharing this inode


_KINDS = {
    stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def snapshot(root: Path) -> dict[str, Node]:
    """Everything about a tree that extraction must reproduce, keyed by relative path."""
    stats: dict[str, os.stat_result] = {}
    for directory, dirs, files in os.walk(root):
        for name in ["", *dirs, *files] if directory == str(root) else [*dirs, *files]:
            path = Path(directory, name) if name else Path(directory)
            stats[path.relative_to(root).as_posix()] = path.lstat()
    by_inode: dict[int, list[str]] = {}
    for relative, st in stats.items():
        if not stat.S_ISDIR(st.st_mode):
            by_inode.setdefault(st.st_ino, []).append(relative)
    nodes: dict[str, Node] = {}
    for relative, st in stats.items():
        path = root / relative
        kind = _KINDS[stat.S_IFMT(st.st_mode)]
        if kind == "file":
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif kind == "symlink":
            content = os.readlink(path)
        elif kind.endswith("device"):
            content = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        else:
            content = ""
        names = os.listxattr(path, follow_symlinks=False)
        xattrs = tuple(sorted(
            (name, os.getxattr(path, name, follow_symlinks=False)) for name in names
        ))
        nodes[relative] = Node(
            kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
            mtime_ns=st.st_mtime_ns, size=st.st_size if kind != "directory" else 0,
            content=content, xattrs=xattrs,
            links=tuple(sorted(by_inode.get(st.st_ino, [relative]))),
        )
    return nodes


def differences(expected: dict[str, Node], actual: dict[str, Node]) -> list[str]:
    """Readable differences between two snapshots (empty when the trees match)."""
    problems = [f"missing: {p}" for p in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected: {p}" for p in sorted(actual.keys() - expected.keys())]
    for path in sorted(expected.keys() & actual.keys()):
        want, got = expected[path], actual[path]
        for name in Node.__dataclass_fields__:
            if getattr(want, name) != getattr(got, name):
                problems.append(
                    f"{path or '.'}: {name} {getattr(want, name)!r} != {getattr(got, name)!r}"
                )
    return problems


def read_until_error(reader: ImageReader) -> tuple[bytes, ImageError | None]:
    """The payload the consumer received, and the error that stopped it (if one did)."""
    received = bytearray()
    try:
        for chunk in reader.payload():
            received += chunk
    except ImageError as e:
        return bytes(received), e
    return bytes(received), None
