from __future__ import annotations

import json
from pathlib import Path

from recovery.history import ImageHistory, Outcome


def test_an_attempt_that_never_finished_counts_as_interrupted(tmp_path: Path) -> None:
    history = ImageHistory(tmp_path / "state" / "image-history.json")
    history.begin_attempt("a")
    # Power cut: nothing finished the attempt. The next boot begins again.
    record = ImageHistory(tmp_path / "state" / "image-history.json").begin_attempt("a")
    assert record.attempts == 2
    assert record.interrupted == 1
    assert record.failures == 1
    assert record.consecutive_failures == 1
    assert record.last_outcome is Outcome.INTERRUPTED
    assert record.failures_counting_open() == 2


def test_success_resets_consecutive_failures(tmp_path: Path) -> None:
    history = ImageHistory(tmp_path / "h.json")
    history.begin_attempt("a")
    history.finish_attempt("a", succeeded=False, reason="disk error")
    history.begin_attempt("a")
    record = history.finish_attempt("a", succeeded=True)
    assert (record.attempts, record.successes, record.failures) == (2, 1, 1)
    assert record.consecutive_failures == 0
    assert not record.in_progress


def test_history_is_durable_json_with_factory_image(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    history = ImageHistory(path, clock=lambda: 1234.0)
    history.set_factory_image("f")
    history.begin_attempt("b")
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert document["factory"] == "f"
    assert document["images"]["b"]["in_progress"] is True
    assert document["images"]["b"]["last_time"] == 1234.0
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"
    history.forget({"b"})
    assert ImageHistory(path).records() == {}
    assert ImageHistory(path).factory_image() == "f"
