from __future__ import annotations

from pathlib import Path

from recovery.boots import (
    BOOT_LIMIT,
    confirm,
    count_handover,
    installed,
    record_installed,
    unconfirmed,
)
from recovery.layout import RecoveryLayout, StateFile


def _layout(tmp_path: Path) -> RecoveryLayout:
    layout = RecoveryLayout(tmp_path)
    layout.state.mkdir()
    return layout


def test_boots_count_until_the_os_confirms(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    assert unconfirmed(layout) is None and installed(layout) is None
    record_installed(layout, image_id="abc", label="demo 1.0")
    first = count_handover(layout, label="demo 1.0")
    assert (first.count, first.image_id, first.given_up) == (1, "abc", False)
    assert confirm(layout) and unconfirmed(layout) is None
    assert not confirm(layout)
    for _ in range(BOOT_LIMIT):
        last = count_handover(layout, label="demo 1.0")
    assert last.given_up and unconfirmed(layout) == last


def test_a_new_install_starts_the_count_again(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    count_handover(layout, label="old")
    record_installed(layout, image_id="new", label="demo 2.0")
    assert unconfirmed(layout) is None
    assert installed(layout) is not None and installed(layout).image_id == "new"  # type: ignore[union-attr]


def test_a_torn_file_reads_as_nothing_counted(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    layout.state_file(StateFile.UNCONFIRMED_BOOTS).write_text('{"count": 2, "ima')
    assert unconfirmed(layout) is None
    assert count_handover(layout, label="x").count == 1
