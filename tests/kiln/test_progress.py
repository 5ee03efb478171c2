from __future__ import annotations

import io

from kiln.progress import Progress, format_bytes, format_duration


def test_units() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * 1024**3) == "5.0 GiB"
    assert format_bytes(3 * 1024**4) == "3072.0 GiB"
    assert format_duration(3725.9) == "1:02:05"


def test_a_line_with_total_rate_and_eta() -> None:
    progress = Progress("extract", total=4096, enabled=True, stream=io.StringIO())
    progress.advance(1024)
    line = progress.line(now=progress.started + 2)
    assert line == "extract: 1.0 KiB / 4.0 KiB (25%)  512 B/s  ETA 0:00:06"


def test_drawn_on_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("verify", total=100, stream=stream, enabled=True) as progress:
        progress.advance(100)
    assert stream.getvalue().startswith("\r\x1b[2Kverify: 100 B / 100 B (100%)")
    assert stream.getvalue().endswith("\n")


def test_silent_in_a_pipe() -> None:
    stream = io.StringIO()  # not a terminal
    with Progress("build", stream=stream) as progress:
        progress.advance(10_000)
    assert not progress.enabled
    assert progress.done == 10_000
    assert stream.getvalue() == ""
