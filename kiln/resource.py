"""The `with` protocol for anything that has a `close()`."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """Subclasses define `close()`; `with thing:` closes it on the way out, error or not."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
