from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest

from kiln.events import (
    Event,
    EventError,
    EventRecorder,
    EventSpool,
    EventType,
    Level,
    Result,
    spools,
)


def recorder(directory: Path, run_id: str = "run1") -> EventRecorder:
    ticks = itertools.count(1_000)
    return EventRecorder(serial="UNIT-1", spool_dir=directory, run_id=run_id,
                         clock=lambda: next(ticks))


class Server:
    """Takes batches like the server will: de-duplicating by (run, seq)."""

    def __init__(self, *, fail_batches: int = 0):
        self.fail_batches = fail_batches
        self.received: dict[tuple[str, int], Event] = {}
        self.batches: list[int] = []

    def __call__(self, batch: Sequence[Event]) -> None:
        if self.fail_batches:
            self.fail_batches -= 1
            raise ConnectionError("network is down")
        self.batches.append(len(batch))
        for event in batch:
            self.received[(event.run_id, event.seq)] = event


def test_every_kind_round_trips_through_json(tmp_path: Path) -> None:
    events = recorder(tmp_path)
    made = [
        events.start("manufacture", "PXE boot"),
        events.progress("manufacture/download", done=10, total=100, message="image"),
        events.progress("manufacture/download", done=10, total=None),
        events.log("manufacture", Level.WARNING, "fan is loud"),
        events.finish("manufacture", Result.WARN, "done with warnings"),
    ]
    assert [e.seq for e in made] == [0, 1, 2, 3, 4]
    assert [e.timestamp_ns for e in made] == [1000, 1001, 1002, 1003, 1004]
    assert [Event.from_json(e.to_json()) for e in made] == made
    assert EventSpool(tmp_path, "run1").events() == made


def test_a_malformed_event_lists_every_problem() -> None:
    with pytest.raises(EventError) as raised:
        Event.from_json({"serial": "", "run_id": "r", "seq": -1, "timestamp_ns": True,
                         "type": "finish", "name": "x", "level": "loud", "extra": 1})
    problems = "\n".join(raised.value.problems)
    for expected in ("unknown key 'extra'", "serial: expected a non-empty string",
                     "seq: expected an integer from 0 to 2**63-1",
                     "timestamp_ns: expected an integer from 0 to 2**63-1",
                     "level: \"loud\" is not one of", "a finish event needs a result"):
        assert expected in problems
    with pytest.raises(EventError, match="only a progress event has done/total"):
        Event.from_json({"serial": "s", "run_id": "r", "seq": 0, "timestamp_ns": 0,
                         "type": "log", "name": "x", "level": "info", "done": 1})


def test_a_stage_finishes_with_fail_and_the_error_when_it_raises(tmp_path: Path) -> None:
    events = recorder(tmp_path)
    with events.stage("restore/format"):
        pass
    with pytest.raises(OSError, match="disk on fire"), events.stage("restore/write"):
        raise OSError("disk on fire")
    kinds = [(e.type, e.name, e.result) for e in events.spool.events()]
    assert kinds == [
        (EventType.START, "restore/format", None),
        (EventType.FINISH, "restore/format", Result.SUCCESS),
        (EventType.START, "restore/write", None),
        (EventType.FINISH, "restore/write", Result.FAIL),
    ]
    assert events.spool.events()[-1].message == "OSError: disk on fire"


def test_nothing_is_lost_while_the_network_is_down(tmp_path: Path) -> None:
    events = recorder(tmp_path)
    for number in range(250):
        events.log("manufacture", Level.INFO, f"line {number}")
    server = Server(fail_batches=2)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            events.spool.flush(server)
        assert events.spool.acknowledged() == -1
        assert len(events.spool.pending()) == 250
    assert events.spool.flush(server) == 250
    assert server.batches == [100, 100, 50]
    assert sorted(seq for _, seq in server.received) == list(range(250))


def test_a_flush_resumes_after_the_last_acknowledged_batch(tmp_path: Path) -> None:
    events = recorder(tmp_path)
    for number in range(250):
        events.log("manufacture", Level.INFO, f"line {number}")

    class FailsSecondBatch(Server):
        dropped = False

        def __call__(self, batch: Sequence[Event]) -> None:
            if len(self.batches) == 1 and not self.dropped:
                self.dropped = True
                raise ConnectionError("dropped")
            super().__call__(batch)

    server = FailsSecondBatch()
    with pytest.raises(ConnectionError):
        events.spool.flush(server)
    assert events.spool.acknowledged() == 99
    assert len(events.spool.pending()) == 150
    assert events.spool.flush(server) == 150
    assert server.batches == [100, 100, 50]
    assert sorted(seq for _, seq in server.received) == list(range(250))
    assert events.spool.flush(server) == 0


def test_a_restarted_run_continues_its_numbering_and_survives_a_torn_line(
    tmp_path: Path,
) -> None:
    first = recorder(tmp_path)
    first.start("manufacture")
    first.log("manufacture", Level.INFO, "before the power cut")
    with first.spool.path.open("ab") as handle:  # the power fails mid-write
        handle.write(b'{"serial":"UNIT-1","run_id":"run1","seq":2,"tim')
    again = recorder(tmp_path)
    event = again.log("manufacture", Level.INFO, "after the power came back")
    assert event.seq == 2
    assert [e.message for e in again.spool.events()] == [
        "", "before the power cut", "after the power came back"]


def test_spools_of_earlier_runs_are_found(tmp_path: Path) -> None:
    recorder(tmp_path, "a").start("x")
    recorder(tmp_path, "b").start("y")
    assert [spool.run_id for spool in spools(tmp_path)] == ["a", "b"]


def test_the_contract_limits_what_an_event_holds() -> None:
    document = {"serial": "s" * 129, "run_id": "r" * 65, "seq": 2**63, "timestamp_ns": 0,
                "type": "log", "name": "a\x00b", "message": "m" * (16 * 1024 + 1),
                "level": "info"}
    with pytest.raises(EventError) as refused:
        Event.from_json(document)
    assert refused.value.problems == (
        "serial: longer than 128 characters", "run_id: longer than 64 characters",
        "name: contains a NUL character", "message: longer than 16384 characters",
        "seq: expected an integer from 0 to 2**63-1")


def test_the_recorder_keeps_every_event_sendable(tmp_path: Path) -> None:
    """A tool's huge or binary output must not make a batch the server refuses forever."""
    made = recorder(tmp_path)
    event = made.log("manufacture", Level.ERROR, "x\x00y" + "z" * 40_000)
    assert len(event.message) <= 16 * 1024
    assert event.message.startswith("x\ufffdy")
    assert event.message.endswith("characters cut]")
    assert Event.from_json(event.to_json()) == event


def test_spools_come_oldest_first(tmp_path: Path) -> None:
    for run_id in ("zzz", "aaa", "mmm"):
        recorder(tmp_path, run_id=run_id).log("boot", Level.INFO, "hello")
    assert [spool.run_id for spool in spools(tmp_path)] == ["zzz", "aaa", "mmm"]
