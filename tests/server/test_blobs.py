"""The blob store and the download header logic, on their own and through the app."""

from __future__ import annotations

import email.utils
import hashlib
import io
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.blobs import ByteRange, Representation, decide, parse_range, safe_filename
from server.config import ServerConfig
from server.store import BlobStore, BlobTooLargeError, StoreError
from tests.server.conftest import OperatorLogin
from tests.server.signed_images import store_leftovers, stored_blobs

SIZE = 1000
SERVED = Representation(size=SIZE, sha256="ab" * 32, modified_seconds=1_800_000_000,
                        filename="demo-1.0.upd")
ETAG = SERVED.etag
MODIFIED = email.utils.formatdate(SERVED.modified_seconds, usegmt=True)
EARLIER = email.utils.formatdate(SERVED.modified_seconds - 60, usegmt=True)
LATER = email.utils.formatdate(SERVED.modified_seconds + 60, usegmt=True)


# --- Range parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-99", [ByteRange(0, 99)]),
    ("bytes=990-", [ByteRange(990, 999)]),
    ("bytes=-10", [ByteRange(990, 999)]),
    ("bytes=-5000", [ByteRange(0, 999)]),
    ("bytes=900-5000", [ByteRange(900, 999)]),
    ("bytes=999-999", [ByteRange(999, 999)]),
    ("Bytes = 1-2", [ByteRange(1, 2)]),
    ("bytes=0-1, 5-9", [ByteRange(0, 1), ByteRange(5, 9)]),
    ("bytes=1000-", []),
    ("bytes=-0", []),
    ("bytes=2000-3000, -0", []),
    ("bytes=2000-, 0-0", [ByteRange(0, 0)]),
    ("bytes=5-4", None),
    ("bytes=a-b", None),
    ("bytes=-", None),
    ("bytes=", None),
    ("bytes=1-2-3", None),
    ("items=0-5", None),
    ("0-5", None),
    ("bytes=" + "9" * 40 + "-", None),
    ("bytes=" + ",".join(["0-0"] * 65), None),
])
def test_parse_range(header: str, expected: list[ByteRange] | None) -> None:
    assert parse_range(header, SIZE) == expected


def test_nothing_of_an_empty_file_is_satisfiable() -> None:
    assert parse_range("bytes=0-", 0) == []
    assert parse_range("bytes=-1", 0) == []


# --- the decision ----------------------------------------------------------------------------


def test_a_plain_get_is_the_whole_file_with_every_header() -> None:
    decision = decide({}, SERVED)
    assert decision.status == 200
    assert decision.content == ByteRange(0, SIZE - 1)
    assert dict(decision.headers) == {
        "ETag": ETAG, "Last-Modified": MODIFIED, "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream", "Content-Length": str(SIZE),
        "Content-Disposition": 'attachment; filename="demo-1.0.upd"'}


def test_one_range_is_206() -> None:
    decision = decide({"range": "bytes=10-19"}, SERVED)
    assert (decision.status, decision.content) == (206, ByteRange(10, 19))
    assert decision.headers["Content-Range"] == f"bytes 10-19/{SIZE}"
    assert decision.headers["Content-Length"] == "10"


def test_unsatisfiable_is_416_with_the_length() -> None:
    decision = decide({"range": "bytes=1000-"}, SERVED)
    assert (decision.status, decision.content) == (416, None)
    assert decision.headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "bytes=5-4", "lines=1-2"])
def test_several_or_invalid_ranges_answer_the_whole_file(header: str) -> None:
    decision = decide({"range": header}, SERVED)
    assert (decision.status, decision.content) == (200, ByteRange(0, SIZE - 1))


@pytest.mark.parametrize(("if_range", "status"), [
    (ETAG, 206), (MODIFIED, 206), ('"other"', 200), (f"W/{ETAG}", 200), (EARLIER, 200),
    (LATER, 200), ("not a date", 200),
])
def test_if_range_keeps_the_range_only_for_the_same_file(if_range: str, status: int) -> None:
    decision = decide({"range": "bytes=0-9", "if-range": if_range}, SERVED)
    assert decision.status == status
    assert decision.content == (ByteRange(0, 9) if status == 206 else ByteRange(0, SIZE - 1))


@pytest.mark.parametrize(("headers", "status"), [
    ({"if-none-match": ETAG}, 304),
    ({"if-none-match": f"W/{ETAG}"}, 304),  # weak comparison
    ({"if-none-match": f'"x", {ETAG}'}, 304),
    ({"if-none-match": "*"}, 304),
    ({"if-none-match": '"other"'}, 200),
    ({"if-match": ETAG}, 200),
    ({"if-match": "*"}, 200),
    ({"if-match": '"other"'}, 412),
    ({"if-match": f"W/{ETAG}"}, 412),  # strong comparison
    ({"if-match": "garbage"}, 412),
    ({"if-unmodified-since": EARLIER}, 412),
    ({"if-unmodified-since": MODIFIED}, 200),
    ({"if-match": ETAG, "if-unmodified-since": EARLIER}, 200),  # If-Match wins
    ({"if-modified-since": MODIFIED}, 304),
    ({"if-modified-since": LATER}, 304),
    ({"if-modified-since": EARLIER}, 200),
    ({"if-modified-since": "yesterday"}, 200),
    ({"if-none-match": '"other"', "if-modified-since": LATER}, 200),  # If-None-Match wins
    ({"if-match": '"other"', "if-none-match": ETAG}, 412),
    ({"if-none-match": ETAG, "range": "bytes=0-1"}, 304),
    ({"if-match": ETAG, "range": "bytes=0-1"}, 206),
])
def test_conditions(headers: dict[str, str], status: int) -> None:
    decision = decide(headers, SERVED)
    assert decision.status == status
    assert decision.headers["ETag"] == ETAG
    if status in (304, 412):
        assert decision.content is None
        assert "Content-Length" not in decision.headers


def test_an_empty_file_has_no_content_range() -> None:
    empty = Representation(size=0, sha256="cd" * 32, modified_seconds=0, filename="empty")
    assert decide({}, empty).content is None
    assert decide({}, empty).headers["Content-Length"] == "0"
    assert decide({"range": "bytes=0-"}, empty).status == 416


def test_filenames_are_made_safe_for_the_header() -> None:
    assert safe_filename('evil"; x=1\r\n.upd') == "evil___x_1__.upd"
    assert safe_filename("") == "download"


# --- the store -------------------------------------------------------------------------------


def test_receive_streams_and_names_the_blob_by_its_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    chunks = [b"abc" * 1000, b"", b"def" * 1000]
    data = b"".join(chunks)
    blob = store.receive(iter(chunks), max_bytes=10_000)
    sha256 = hashlib.sha256(data).hexdigest()
    assert (blob.sha256, blob.size) == (sha256, len(data))
    assert blob.path == tmp_path / "store" / "sha256" / sha256[:2] / sha256
    assert blob.path.read_bytes() == data
    assert blob.sha1 == hashlib.sha1(data).hexdigest()  # noqa: S324
    assert blob.md5 == hashlib.md5(data).hexdigest()  # noqa: S324
    assert list(store.tmp_dir.iterdir()) == []


def test_a_file_object_is_read_in_blocks(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    data = bytes(range(256)) * 20_000  # several read blocks
    blob = store.receive(io.BytesIO(data), max_bytes=len(data))
    assert blob.path.read_bytes() == data


def test_an_identical_blob_is_kept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    first = store.receive([b"same"], max_bytes=100)
    inode = first.path.stat().st_ino
    writer = store.writer(max_bytes=100)
    writer.write(b"same")
    second = writer.commit()
    writer.close()
    assert second == first
    assert not writer.created
    assert first.path.stat().st_ino == inode
    assert stored_blobs(store.root) == [first.sha256]
    assert list(store.tmp_dir.iterdir()) == []


def test_too_much_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    with pytest.raises(BlobTooLargeError, match="limit of 10 bytes"):
        store.receive([b"123456", b"78901"], max_bytes=10)
    assert store_leftovers(store.root) == []


def test_an_abandoned_upload_is_removed_and_a_committed_one_stays(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    with store.writer(max_bytes=100) as abandoned:
        abandoned.write(b"partial")
        assert abandoned.path.exists()
    assert not abandoned.path.exists()
    with store.writer(max_bytes=100) as kept:
        kept.write(b"whole")
        blob = kept.commit()
    assert blob.path.read_bytes() == b"whole"
    with pytest.raises(StoreError, match="already committed"):
        kept.commit()


def test_clean_removes_leftovers_only(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    blob = store.receive([b"keep me"], max_bytes=100)
    leftover = store.writer(max_bytes=100)
    leftover.write(b"crashed")
    assert store.clean() == 1
    assert list(store.tmp_dir.iterdir()) == []
    assert blob.path.read_bytes() == b"keep me"


def test_digests_survive_a_lost_sidecar(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    blob = store.receive([b"hawkbit wants md5"], max_bytes=100)
    sidecar = blob.path.with_name(blob.path.name + ".json")
    assert store.digests(blob.sha256).md5 == blob.md5
    sidecar.unlink()
    again = store.digests(blob.sha256)
    assert (again.sha1, again.md5, again.size) == (blob.sha1, blob.md5, blob.size)
    assert sidecar.exists()
    assert store.remove(blob.sha256)
    assert not sidecar.exists()
    assert not store.remove(blob.sha256)
    with pytest.raises(StoreError, match="not in the store"):
        store.digests(blob.sha256)


def test_paths_are_only_for_digests(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    for bad in ["../../etc/passwd", "AB" * 32, "ab" * 31]:
        with pytest.raises(ValueError, match="not a sha256"):
            store.path_of(bad)


def test_the_lock_excludes_other_holders(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    order: list[str] = []
    inside = threading.Event()

    def other() -> None:
        inside.wait()
        with store.lock():  # a second open file description: flock blocks here
            order.append("other")

    thread = threading.Thread(target=other)
    thread.start()
    with store.lock():
        inside.set()
        thread.join(timeout=0.3)
        order.append("first")
    thread.join()
    assert order == ["first", "other"]


# --- through the app -------------------------------------------------------------------------


def test_served_headers_through_the_app(client: TestClient, app: FastAPI,
                                        admin: OperatorLogin) -> None:
    data = bytes(range(256)) * 8
    client.put("/api/v1/files/blob.bin", content=data, headers=admin.headers)
    url = "/api/v1/files/blob.bin"
    plain = client.get(url, headers=admin.headers)
    etag = plain.headers["etag"]
    cases = [
        ({"Range": "bytes=0-0"}, 206, data[:1]),
        ({"Range": "bytes=2040-"}, 206, data[2040:]),
        ({"Range": "bytes=5000-"}, 416, None),
        ({"Range": "bytes=0-0", "If-Range": '"stale"'}, 200, data),
        ({"If-None-Match": etag}, 304, b""),
        ({"If-Match": '"stale"'}, 412, b""),
    ]
    for headers, status, body in cases:
        answer = client.get(url, headers={**admin.headers, **headers})
        assert answer.status_code == status, headers
        if body is not None:
            assert answer.content == body, headers
    config: ServerConfig = app.state.context.config
    assert stored_blobs(config.store_dir) == [etag.strip('"')]
