"""The erase tests' raw search must see every data region of a sparse image: it is what says
a secret is gone."""

from __future__ import annotations

from pathlib import Path

from tests.erase.eraseos import contains


def test_the_search_finds_a_needle_in_any_short_region_of_a_sparse_image(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with image.open("wb") as handle:
        handle.truncate(64 << 20)
        for offset, text in ((0, b"first"), (1 << 20, b"second"), (40 << 20, b"third")):
            handle.seek(offset)
            handle.write(text.ljust(4096, b"\0"))
    for needle in (b"first", b"second", b"third"):
        assert contains(image, needle), needle
    assert not contains(image, b"fourth")
