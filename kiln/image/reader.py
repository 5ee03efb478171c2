"""Read a `.upd` image with every byte verified before anyone uses it.

Opening a reader reads the envelope, checks its signatures against the trusted keys and only
then parses the manifest. Each frame's compressed bytes are checked against the manifest's
sha256 before they are decompressed, and each frame must be exactly one complete zstd frame
that decompresses to exactly the size the manifest implies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from kiln.image.envelope import HEADER, Envelope, decode_envelope, envelope_size
from kiln.image.errors import (
    EnvelopeError,
    FrameError,
    ImageError,
    SourceTruncatedError,
)
from kiln.image.manifest import Manifest
from kiln.image.signing import TrustStore
from kiln.image.source import ByteSource, RetryPolicy, open_source
from kiln.progress import Progress
from kiln.resource import Closing


class TruncatedFrameError(FrameError):
    """The source ends inside or before this frame."""


@dataclass(frozen=True)
class VerifiedFrame:
    index: int
    data: bytes  # the compressed bytes, sha256 already checked


def read_envelope(source: ByteSource) -> Envelope:
    """Read the envelope without checking it (for `inspect`)."""
    try:
        header = source.read_exact(0, HEADER.size)
        size = envelope_size(header)
        return decode_envelope(header + source.read_exact(HEADER.size, size - HEADER.size))
    except SourceTruncatedError as e:
        raise EnvelopeError(f"{source.description}: the envelope is cut off ({e})") from e


def decode_frame(index: int, data: bytes, expected_size: int) -> bytes:
    """Decompress one verified frame, insisting it is exactly one whole zstd frame."""
    try:
        output: bytes = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=expected_size, allow_extra_data=False
        )
    except zstandard.ZstdError:
        _explain_bad_frame(index, data, expected_size)
        raise
    if len(output) != expected_size:
        raise FrameError(
            index, f"decompresses to {len(output)} bytes; the manifest implies {expected_size}"
        )
    return output


def _explain_bad_frame(index: int, data: bytes, expected_size: int) -> None:
    """Raise the `FrameError` that says precisely what is wrong with a frame that failed."""
    decompressor = zstandard.ZstdDecompressor().decompressobj(write_size=expected_size)
    try:
        decompressor.decompress(data)
    except zstandard.ZstdError as e:
        raise FrameError(index, f"not a valid zstd frame ({e})") from e
    if not decompressor.eof:
        raise FrameError(index, f"the manifest's length {len(data)} ends inside the zstd frame")
    if decompressor.unused_data:
        raise FrameError(
            index, f"the manifest's length {len(data)} runs {len(decompressor.unused_data)} "
            "bytes past the end of the zstd frame"
        )
    raise FrameError(index, f"does not decompress to the {expected_size} bytes it should")


class ImageReader(Closing):
    """A signature-checked image; iterate its frames or its payload."""

    def __init__(self, source: ByteSource, trust: TrustStore):
        self.source = source
        self.envelope = read_envelope(source)
        self.key_id = self.envelope.verify(trust)
        self.manifest: Manifest = self.envelope.parse_manifest()

    @classmethod
    def open(
        cls, location: str | Path, trust: TrustStore, *, retry: RetryPolicy | None = None
    ) -> ImageReader:
        source = open_source(location, retry=retry)
        try:
            return cls(source, trust)
        except BaseException:
            source.close()
            raise

    @property
    def image_id(self) -> str:
        return self.envelope.image_id

    @property
    def payload_offset(self) -> int:
        return self.envelope.size

    @property
    def total_size(self) -> int:
        """The size the whole `.upd` file must have."""
        return self.envelope.size + self.manifest.compressed_size

    def read_frame(self, index: int) -> VerifiedFrame:
        """Read frame `index` and check its sha256 (one more read if the source is a network)."""
        frame = self.manifest.frames[index]
        start = self.payload_offset + frame.offset
        reads = 2 if self.source.rereadable else 1
        for read in range(1, reads + 1):
            try:
                data = self.source.read_exact(start, frame.length)
            except SourceTruncatedError as e:
                raise TruncatedFrameError(
                    index, f"cut off: the image ends before the frame does ({e})"
                ) from e
            digest = hashlib.sha256(data).hexdigest()
            if digest == frame.sha256:
                return VerifiedFrame(index=index, data=data)
            self.source.forget_position()
            if read == reads:
                raise FrameError(
                    index, f"sha256 mismatch (bytes {start}-{start + frame.length - 1}: "
                    f"expected {frame.sha256[:16]}…, got {digest[:16]}…)"
                )
        raise AssertionError("unreachable")

    def frames(self, *, start: int = 0) -> Iterator[VerifiedFrame]:
        for index in range(start, len(self.manifest.frames)):
            yield self.read_frame(index)

    def payload(self) -> Iterator[bytes]:
        """The decompressed payload, frame by frame, each verified before it is yielded."""
        for frame in self.frames():
            yield decode_frame(
                frame.index, frame.data, self.manifest.frame_output_size(frame.index)
            )

    def verify(self, *, progress: Progress | None = None) -> None:
        """Check every frame (checksum and zstd structure) and the file's exact length."""
        for frame in self.frames():
            decode_frame(frame.index, frame.data, self.manifest.frame_output_size(frame.index))
            if progress:
                progress.advance(len(frame.data))
        size = self.source.size()
        if size is not None and size != self.total_size:
            raise ImageError(
                f"{self.source.description}: {size - self.total_size} unexpected bytes after "
                "the last frame"
            )

    def close(self) -> None:
        self.source.close()
