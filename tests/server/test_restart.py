"""SIGKILL a real `kiln server` while units stream events and an image upload is half
received, start it again on the same data, and check what survived.

- Every batch the server acknowledged (200) is stored, in full.
- The batch in flight at the kill is stored whole or not at all; resending it and the batches
  after it (what a unit's spool does) stores each event exactly once.
- The half-received image is nowhere: not listed, no blob, no temporary file left in
  `store/tmp` after the restart; the same upload then completes.

Runs on SQLite and on PostgreSQL (two worker processes there: `kiln server`'s default).
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from kiln.events import Level
from kiln.image.signing import SigningKey
from tests.server.conftest import example_manufdata
from tests.server.helpers import RunEvents
from tests.server.live import LiveServer
from tests.server.signed_images import build_test_image, stored_blobs

UNITS = 6
BATCH = 20  # events per batch
BATCHES = 400  # per unit: far more than get sent before the kill
RESENT_AFTER_FIRST_UNACKNOWLEDGED = 2
ACKNOWLEDGED_BEFORE_KILL = 3  # batches per unit, at least
FIRST_UPLOAD_CHUNK = 64 * 1024
WAIT_SECONDS = 30


@dataclass
class UnitStream:
    """One unit's run, sent batch after batch like a unit's spool flush."""

    serial: str
    batches: list[list[dict[str, Any]]]
    acknowledged: list[int] = field(default_factory=list)  # batch indexes answered 200
    first_unacknowledged: int | None = None
    refusal: str = ""  # an answer other than 200 before the kill (a failure of the test)

    @property
    def run_id(self) -> str:
        return str(self.batches[0][0]["run_id"])

    @classmethod
    def make(cls, serial: str) -> UnitStream:
        run = RunEvents(serial)
        batches = [[run.start("manufacture").to_json()]
                   + [run.log("manufacture/write", f"line {i}", Level.INFO).to_json()
                      for i in range(BATCH - 1)]]
        batches += [[run.log("manufacture/write", f"line {i}", Level.INFO).to_json()
                     for i in range(BATCH)] for _ in range(BATCHES - 1)]
        return cls(serial, batches)

    def send_until_refused(self, url: str, auth: tuple[str, str]) -> None:
        with requests.Session() as session:
            for index, batch in enumerate(self.batches):
                try:
                    answer = session.post(f"{url}/api/v1/events", json={"events": batch},
                                          auth=auth, timeout=WAIT_SECONDS)
                except requests.RequestException:
                    self.first_unacknowledged = index
                    return
                if answer.status_code != 200:
                    self.refusal = f"batch {index}: {answer.status_code} {answer.text}"
                    self.first_unacknowledged = index
                    return
                self.acknowledged.append(index)


@dataclass
class SlowUpload:
    """An image upload that sends its first chunk, then holds the request open."""

    data: bytes
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""

    def body(self) -> Iterator[bytes]:
        yield self.data[:FIRST_UPLOAD_CHUNK]
        self.started.set()
        self.release.wait(WAIT_SECONDS)

    def send(self, url: str, token: str) -> None:
        try:
            answer = requests.post(f"{url}/api/v1/images", data=self.body(),
                                   headers={"Authorization": f"Bearer {token}",
                                            "Content-Type": "application/octet-stream"},
                                   timeout=WAIT_SECONDS)
            self.outcome = f"answered {answer.status_code}"
        except requests.RequestException as e:
            self.outcome = f"cut off: {type(e).__name__}"


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _stored_seqs(url: str, token: str, stream: UnitStream) -> list[int]:
    seqs: list[int] = []
    after = 0
    while True:
        params: dict[str, str | int] = {"run_id": stream.run_id, "after": after, "limit": 5000}
        answer = requests.get(f"{url}/api/v1/units/{stream.serial}/events", params=params,
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        page = answer.json()["events"]
        if not page:
            return seqs
        seqs += [event["seq"] for event in page]
        after = page[-1]["id"]


def _seqs_of(batches: list[list[dict[str, Any]]]) -> list[int]:
    return [event["seq"] for batch in batches for event in batch]


@pytest.mark.allow_commands("python", "tar")
def test_a_killed_server_keeps_what_it_acknowledged_and_nothing_half_done(
        tmp_path: Path, database_url: str, signing_dir: Path,
        signing_key: SigningKey) -> None:
    image, _manifest = build_test_image(tmp_path, [signing_key])
    data = image.read_bytes()
    data_dir = tmp_path / "server"
    (data_dir / "keys").mkdir(parents=True)
    shutil.copy(signing_dir / "test.pub", data_dir / "keys" / "test.pub")
    tmp_dir = data_dir / "store" / "tmp"
    server = LiveServer(data_dir=data_dir, database_url=database_url)
    server.run()
    try:
        _password, token = server.admin()
        operator = {"Authorization": f"Bearer {token}"}
        answer = requests.put(f"{server.url}/api/v1/profiles/line1", headers=operator,
                              json={"manufdata": example_manufdata()}, timeout=30)
        assert answer.status_code == 201, answer.text
        line = ("line1", answer.json()["line_key"])
        streams = [UnitStream.make(f"SN-RESTART-{index:02d}") for index in range(UNITS)]
        for stream in streams:
            answer = requests.post(f"{server.url}/mfg/line1/units", auth=line,
                                   json={"serial": stream.serial}, timeout=30)
            assert answer.status_code == 201, answer.text

        upload = SlowUpload(data)
        threads = [threading.Thread(target=stream.send_until_refused, args=(server.url, line))
                   for stream in streams]
        threads.append(threading.Thread(target=upload.send, args=(server.url, token)))
        for thread in threads:
            thread.start()
        _wait_for(lambda: upload.started.is_set() and any(tmp_dir.iterdir()),
                  "the upload to reach the store")
        _wait_for(lambda: all(len(stream.acknowledged) >= ACKNOWLEDGED_BEFORE_KILL
                              or stream.refusal for stream in streams),
                  "every unit to get batches acknowledged")
        server.kill()
        upload.release.set()
        for thread in threads:
            thread.join(WAIT_SECONDS)
        assert not any(thread.is_alive() for thread in threads)
        assert [stream.refusal for stream in streams if stream.refusal] == []
        assert upload.outcome.startswith("cut off"), upload.outcome
        assert any(tmp_dir.iterdir()), "the half-received upload left no temporary file"

        server.run()
        for stream in streams:
            assert stream.first_unacknowledged is not None, "a unit sent everything: raise BATCHES"
            acknowledged = _seqs_of([stream.batches[i] for i in stream.acknowledged])
            stored = _stored_seqs(server.url, token, stream)
            in_flight = _seqs_of([stream.batches[stream.first_unacknowledged]])
            assert stored[:len(acknowledged)] == acknowledged, stream.serial
            # The batch cut off by the kill: stored whole, or not at all.
            assert stored[len(acknowledged):] in ([], in_flight), stream.serial

            end = stream.first_unacknowledged + RESENT_AFTER_FIRST_UNACKNOWLEDGED + 1
            for index in range(stream.first_unacknowledged, end):
                batch = stream.batches[index]
                answer = requests.post(f"{server.url}/api/v1/events", auth=line,
                                       json={"events": batch}, timeout=30)
                assert answer.status_code == 200, answer.text
                counts = answer.json()
                assert counts["accepted"] in (0, len(batch)), counts
                assert counts["accepted"] + counts["duplicates"] == len(batch)
            again = requests.post(f"{server.url}/api/v1/events", auth=line,
                                  json={"events": stream.batches[end - 1]}, timeout=30)
            assert again.json() == {"accepted": 0, "duplicates": BATCH}
            assert _stored_seqs(server.url, token, stream) == _seqs_of(stream.batches[:end])

        assert list(tmp_dir.iterdir()) == []
        assert stored_blobs(data_dir / "store") == []
        listed = requests.get(f"{server.url}/api/v1/images", headers=operator, timeout=30)
        assert listed.json() == {"images": []}

        answer = requests.post(f"{server.url}/api/v1/images", data=data, timeout=30,
                               headers={**operator,
                                        "Content-Type": "application/octet-stream"})
        assert answer.status_code == 201, answer.text
        image_id = answer.json()["id"]
        listed = requests.get(f"{server.url}/api/v1/images", headers=operator, timeout=30)
        assert [found["id"] for found in listed.json()["images"]] == [image_id]
        download = requests.get(f"{server.url}/api/v1/images/{image_id}/file",
                                headers=operator, timeout=30)
        assert hashlib.sha256(download.content).digest() == hashlib.sha256(data).digest()
    finally:
        server.stop()
