"""The manufacture runner's pieces without a VM: the back-off for an absent server, the
steps' order, and the DHCP lease → resolv.conf path of the ramdisk's network set-up."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from initramfs.network import Lease, read_lease, resolv_conf
from kiln.events import EventRecorder
from kiln.serverclient import ServerError
from provision.manufacture import Backoff, fetch_manufdata, flush
from provision.mfgsteps import STEPS, Step


class FlakyClient:
    manufdata_url = "http://server/mfg/line1/manufData.json"

    def __init__(self, errors: list[ServerError]):
        self.errors = errors
        self.calls = 0

    def manufdata(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return _FakeManufData()


class _FakeManufData:
    product = "demo"
    files = ("a",)
    variants = ("v",)


def test_an_unreachable_server_is_retried_with_growing_waits() -> None:
    client = FlakyClient([ServerError("down"), ServerError("down"), ServerError("5xx", status=503)])
    waits: list[float] = []
    found = fetch_manufdata(client, backoff=Backoff(first_seconds=1, max_seconds=3),  # type: ignore[arg-type]
                            sleep=waits.append)
    assert found is not None and client.calls == 4
    assert waits == [1, 2, 3]


def test_a_refusal_is_not_retried() -> None:
    client = FlakyClient([ServerError("no such profile", status=404)])
    with pytest.raises(ServerError, match="no such profile"):
        fetch_manufdata(client, backoff=Backoff(), sleep=lambda _: None)  # type: ignore[arg-type]
    assert client.calls == 1


def test_the_back_off_gives_up_at_its_deadline() -> None:
    client = FlakyClient([ServerError("down")] * 100)
    with pytest.raises(ServerError, match="down"):
        fetch_manufdata(client, backoff=Backoff(first_seconds=10, deadline_seconds=5),  # type: ignore[arg-type]
                        sleep=lambda _: None)
    assert client.calls == 1


def test_files_and_credentials_are_checked_before_anything_is_written() -> None:
    names = [step.name if isinstance(step, Step) else str(step) for step in STEPS]
    assert names.index("files") < names.index("credentials") < names.index("partition")
    assert names.index("partition") < names.index("mount") < names.index("recovery")
    assert names.index("boot") < names.index("wipe")  # where recovery.bootsetup is called
    assert names.index("after_validate") < names.index("partition")
    assert names.index("mount") < names.index("after_partition") < names.index("recovery")
    assert names.index("recovery") < names.index("after_images")
    assert names[-1] == "before_reboot"


def test_a_lease_becomes_resolv_conf(tmp_path: Path) -> None:
    (tmp_path / "eth0").write_text("ip=10.0.2.15\nmask=24\nrouter=10.0.2.2\n"
                                   "dns=10.0.2.3 10.0.2.4\ndomain=lab\n")
    lease = read_lease(tmp_path / "eth0", interface="eth0")
    assert lease == Lease(interface="eth0", address="10.0.2.15/24", routers=("10.0.2.2",),
                          dns=("10.0.2.3", "10.0.2.4"), domain="lab")
    assert resolv_conf(lease) == "search lab\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n"


class _FlakyEvents:
    def __init__(self, failures: int):
        self.failures = failures
        self.batches: list[int] = []

    def send_events(self, batch: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ServerError("events: cannot reach server")
        self.batches.append(len(batch))


def _state(tmp_path: Path, client: _FlakyEvents) -> Any:
    recorder = EventRecorder(serial="SN-FLUSH", spool_dir=tmp_path)
    recorder.start("manufacture", "run")
    return SimpleNamespace(recorder=recorder, client=client)


def test_a_required_flush_tries_again_before_it_gives_up(tmp_path: Path) -> None:
    client = _FlakyEvents(failures=2)
    waits: list[float] = []
    assert flush(_state(tmp_path / "a", client), required=True, sleep=waits.append)
    assert waits == [2.0, 4.0] and client.batches == [1]

    never = _FlakyEvents(failures=100)
    with pytest.raises(ServerError, match="cannot reach"):
        flush(_state(tmp_path / "b", never), required=True, sleep=waits.append)
    assert never.failures == 100 - 4  # the first try and three more


def test_an_optional_flush_keeps_the_events_for_later(tmp_path: Path) -> None:
    client = _FlakyEvents(failures=1)
    state = _state(tmp_path, client)
    assert not flush(state, sleep=lambda _: pytest.fail("an optional flush never waits"))
    assert flush(state) and client.batches == [1]


def test_the_last_flush_waits_for_the_server_then_leaves_the_rest_spooled(
        tmp_path: Path) -> None:
    waits: list[float] = []
    client = _FlakyEvents(failures=100)
    state = _state(tmp_path, client)
    assert not flush(state, waits=(1.0, 2.0), sleep=waits.append)
    assert waits == [1.0, 2.0] and client.failures == 97
    assert len(list(state.recorder.spool.events())) == 1  # still there for a later boot
