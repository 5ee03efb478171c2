"""What can be wrong with an image, each kind its own exception."""

from kiln.errors import KilnError


class ImageError(KilnError):
    """The image cannot be used."""


class ManifestError(ImageError):
    """The manifest is malformed; `problems` lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        super().__init__("invalid manifest:\n  " + "\n  ".join(problems))


class EnvelopeError(ImageError):
    """The file does not start with a readable Kiln envelope."""


class SignatureError(ImageError):
    """The manifest is not signed by a trusted key, or a signature does not match."""


class UntrustedKeyError(SignatureError):
    """Signed only by keys the reader does not trust."""


class FrameError(ImageError):
    """A payload frame is missing, truncated, altered or not what the manifest says."""

    def __init__(self, index: int, problem: str):
        self.index = index
        super().__init__(f"frame {index}: {problem}")


class SourceTruncatedError(ImageError):
    """The source ended before the requested byte range (the reader names the frame)."""


class SourceError(ImageError):
    """The image could not be read from its source (file or URL)."""


class UnsafeArchiveError(ImageError):
    """A payload member would land outside the destination, or the archive is malformed."""
