"""The image manifest: a typed, strictly validated contract.

Parsing lists every problem at once. Unknown keys are errors: a newer manifest layout gets a
new `manifest_version`, which older readers refuse by name instead of misreading.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kiln.image.errors import ManifestError

MANIFEST_VERSION = 1
MIN_FRAME_SIZE = 4096
MAX_FRAME_SIZE = 256 * 1024 * 1024
DEFAULT_FRAME_SIZE = 8 * 1024 * 1024

_PRODUCT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VARIANT = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
_VERSION = re.compile(r"^\d{1,9}(\.\d{1,9}){0,5}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CREATED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")

_Choice = TypeVar("_Choice", bound=enum.StrEnum)
_Item = TypeVar("_Item")


class PayloadKind(enum.StrEnum):
    ROOTFS_TAR = "rootfs-tar"


class Compression(enum.StrEnum):
    ZSTD = "zstd"


def compressed_bound(size: int) -> int:
    """ZSTD_compressBound plus room for a frame header: no honest frame is longer."""
    return size + (size >> 8) + 128 * 1024 + 64


def version_key(version: str) -> tuple[int, ...]:
    """Dotted numeric versions compare numerically: 1.10 > 1.9."""
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class Frame:
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    product: str
    version: str
    build: int
    created: str
    variants: tuple[str, ...]
    payload_kind: PayloadKind
    compression: Compression
    payload_size: int
    frame_size: int
    frames: tuple[Frame, ...]
    description: str = ""
    manifest_version: int = MANIFEST_VERSION

    @property
    def compressed_size(self) -> int:
        return sum(frame.length for frame in self.frames)

    @property
    def sort_key(self) -> tuple[tuple[int, ...], int]:
        """Images order by version, then build; never by file name."""
        return (version_key(self.version), self.build)

    @property
    def label(self) -> str:
        return f"{self.product} {self.version} (build {self.build})"

    @property
    def release(self) -> str:
        """Version and build as one string: the software module's version on the server,
        and what the update agent reports as installed."""
        return release_of(self.version, self.build)

    def frame_output_size(self, index: int) -> int:
        """How many bytes frame `index` decompresses to."""
        if index < len(self.frames) - 1:
            return self.frame_size
        return self.payload_size - self.frame_size * (len(self.frames) - 1)

    def supports_variant(self, variant: str) -> bool:
        return "*" in self.variants or variant in self.variants

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "manifest_version": self.manifest_version,
            "product": self.product,
            "version": self.version,
            "build": self.build,
            "created": self.created,
            "variants": list(self.variants),
            "payload": {
                "kind": self.payload_kind.value,
                "compression": self.compression.value,
                "size": self.payload_size,
                "compressed_size": self.compressed_size,
                "frame_size": self.frame_size,
                "frames": [
                    {"offset": f.offset, "length": f.length, "sha256": f.sha256}
                    for f in self.frames
                ],
            },
        }
        if self.description:
            document["description"] = self.description
        return document

    def canonical_text(self) -> str:
        """The exact text that is signed: sorted keys, no insignificant whitespace."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def release_of(version: str, build: int) -> str:
    return f"{version}+{build}"


def image_id(manifest_text: str) -> str:
    """A stable identity for one signed build: the sha256 of its manifest text."""
    return hashlib.sha256(manifest_text.encode()).hexdigest()


class _Checker:
    """Collects problems while reading an untrusted JSON document."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def keys(self, where: str, document: dict[str, Any], *, required: set[str],
             optional: frozenset[str] = frozenset()) -> None:
        for key in sorted(required - document.keys()):
            self.problems.append(f"{where}: missing key '{key}'")
        for key in sorted(document.keys() - required - optional):
            self.problems.append(f"{where}: unknown key '{key}'")

    def integer(self, where: str, value: Any, *, minimum: int = 0) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"{where}: expected an integer, got {json.dumps(value)}")
            return None
        if value < minimum:
            self.problems.append(f"{where}: must be at least {minimum}, got {value}")
            return None
        return value

    def text(self, where: str, value: Any, pattern: re.Pattern[str] | None = None,
             what: str = "") -> str | None:
        if not isinstance(value, str):
            self.problems.append(f"{where}: expected a string, got {json.dumps(value)}")
            return None
        if pattern is not None and not pattern.match(value):
            self.problems.append(f"{where}: {json.dumps(value)} is not {what}")
            return None
        return value

    def choice(
        self, where: str, value: Any, kind: type[_Choice], what: str
    ) -> _Choice | None:
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
        known = ", ".join(member.value for member in kind)
        self.problems.append(f"{where}: unknown {what} {json.dumps(value)} (known: {known})")
        return None


def parse_manifest(text: str) -> Manifest:
    """Parse and validate manifest JSON; raise `ManifestError` listing every problem."""
    try:
        document = json.loads(text, parse_float=_reject_float, parse_constant=_reject_float)
    except (json.JSONDecodeError, ValueError) as e:
        raise ManifestError([f"not valid JSON: {e}"]) from e
    if not isinstance(document, dict):
        raise ManifestError(["the manifest must be a JSON object"])
    check = _Checker()
    version = document.get("manifest_version")
    if isinstance(version, bool) or version != MANIFEST_VERSION:  # true == 1 in Python
        raise ManifestError([
            f"unsupported manifest_version {json.dumps(version)}; this Kiln reads version "
            f"{MANIFEST_VERSION}"
        ])
    check.keys("manifest", document,
               required={"manifest_version", "product", "version", "build", "created",
                         "variants", "payload"},
               optional=frozenset({"description"}))
    product = check.text("product", document.get("product"), _PRODUCT, "a product name")
    image_version = check.text(
        "version", document.get("version"), _VERSION, "a dotted numeric version like 2.1.0"
    )
    build = check.integer("build", document.get("build"))
    created = check.text(
        "created", document.get("created"), _CREATED, "a UTC time like 2026-01-31T12:00:00Z"
    )
    description = check.text("description", document.get("description", ""))
    variants = _variants(check, document.get("variants"))
    payload = _payload(check, document.get("payload"))
    if check.problems:
        raise ManifestError(check.problems)
    assert product and image_version and build is not None and created and payload
    kind, compression, size, frame_size, frames = payload
    return Manifest(
        product=product, version=image_version, build=build, created=created,
        variants=variants, payload_kind=kind, compression=compression, payload_size=size,
        frame_size=frame_size, frames=frames, description=description or "",
    )


def _reject_float(value: str) -> Any:
    raise ValueError(f"numbers must be integers, got {value}")


def _variants(check: _Checker, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        check.problems.append("variants: expected a non-empty list of hardware variant names")
        return ()
    names = [check.text(f"variants[{i}]", v, _VARIANT, "a variant name or '*'")
             for i, v in enumerate(value)]
    return tuple(name for name in names if name)


_PayloadFields = tuple[PayloadKind, Compression, int, int, tuple[Frame, ...]]


def _payload(check: _Checker, value: Any) -> _PayloadFields | None:
    if not isinstance(value, dict):
        check.problems.append("payload: expected an object")
        return None
    check.keys("payload", value, required={"kind", "compression", "size", "compressed_size",
                                           "frame_size", "frames"})
    kind = check.choice("payload.kind", value.get("kind"), PayloadKind, "payload kind")
    compression = check.choice(
        "payload.compression", value.get("compression"), Compression, "compression"
    )
    size = check.integer("payload.size", value.get("size"), minimum=1)
    compressed_size = check.integer("payload.compressed_size", value.get("compressed_size"))
    frame_size = check.integer("payload.frame_size", value.get("frame_size"),
                               minimum=MIN_FRAME_SIZE)
    if frame_size is not None and (frame_size > MAX_FRAME_SIZE or frame_size % 512):
        check.problems.append(
            f"payload.frame_size: {frame_size} must be a multiple of 512 and at most "
            f"{MAX_FRAME_SIZE}"
        )
        frame_size = None
    frames = _frames(check, value.get("frames"), frame_size)
    if frames is not None and compressed_size is not None:
        total = sum(frame.length for frame in frames)
        if total != compressed_size:
            check.problems.append(
                f"payload.compressed_size: {compressed_size} but the frames add up to {total}"
            )
    if frames is not None and size is not None and frame_size is not None:
        expected = -(-size // frame_size)
        if len(frames) != expected:
            check.problems.append(
                f"payload.frames: {len(frames)} frames, but {size} bytes in frames of "
                f"{frame_size} need {expected}"
            )
    if None in (kind, compression, size, frame_size, frames):
        return None
    assert kind and compression and size and frame_size and frames is not None
    return kind, compression, size, frame_size, frames


def _frames(check: _Checker, value: Any, frame_size: int | None) -> tuple[Frame, ...] | None:
    if not isinstance(value, list) or not value:
        check.problems.append("payload.frames: expected a non-empty list")
        return None
    frames: list[Frame] = []
    expected_offset = 0
    for index, entry in enumerate(value):
        where = f"payload.frames[{index}]"
        if not isinstance(entry, dict):
            check.problems.append(f"{where}: expected an object")
            continue
        before = len(check.problems)
        check.keys(where, entry, required={"offset", "length", "sha256"})
        offset = check.integer(f"{where}.offset", entry.get("offset"))
        length = check.integer(f"{where}.length", entry.get("length"), minimum=1)
        digest = check.text(f"{where}.sha256", entry.get("sha256"), _SHA256,
                            "a lowercase hex sha256")
        if offset is not None and offset != expected_offset:
            check.problems.append(
                f"{where}.offset: {offset}, but the frames before it end at {expected_offset}"
            )
        if length is not None and frame_size is not None and length > compressed_bound(frame_size):
            check.problems.append(
                f"{where}.length: {length} is more than a frame of {frame_size} bytes can take"
            )
        if length is not None:
            expected_offset = (offset if offset is not None else expected_offset) + length
        if len(check.problems) == before:
            assert offset is not None and length is not None and digest is not None
            frames.append(Frame(offset=offset, length=length, sha256=digest))
    if len(frames) != len(value):
        return None
    return tuple(frames)


def sorted_newest_first(
    items: Sequence[_Item], manifest_of: Callable[[_Item], Manifest]
) -> list[_Item]:
    """Newest first by (version, build)."""
    return sorted(items, key=lambda item: manifest_of(item).sort_key, reverse=True)
