"""Images on the server: push (verified before anything is stored), list, get, download with
ranges and validators, delete; the factory line's download; refusals that leave nothing."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiln.image.manifest import Manifest, image_id
from kiln.image.signing import SigningKey
from server.app import create_app, prepare
from server.auth import Scope
from server.config import ServerConfig
from server.store import BlobStore
from tests.kiln.image.helpers import (
    flip,
    make_image_from_payload,
    signed_envelope_for_text,
    silent_flip,
)
from tests.server.conftest import LineLogin, OperatorLogin, make_operator
from tests.server.helpers import table_rows
from tests.server.live import LiveServer
from tests.server.signed_images import build_test_image, store_leftovers, stored_blobs

pytestmark = pytest.mark.allow_commands("tar")

OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def image(tmp_path: Path, signing_key: SigningKey) -> tuple[Path, Manifest]:
    return build_test_image(tmp_path, [signing_key])


def push(client: TestClient, data: bytes, *, login: OperatorLogin | None) -> httpx.Response:
    headers = {**OCTETS, **(login.headers if login else {})}
    answer: httpx.Response = client.post("/api/v1/images", content=data, headers=headers)
    return answer


def pushed(client: TestClient, path: Path, admin: OperatorLogin) -> dict[str, object]:
    answer = push(client, path.read_bytes(), login=admin)
    assert answer.status_code == 201, answer.text
    document: dict[str, object] = answer.json()
    return document


def store_dir(app: FastAPI) -> Path:
    config: ServerConfig = app.state.context.config
    return config.store_dir


def test_a_good_image_is_stored_listed_and_audited(
        client: TestClient, app: FastAPI, admin: OperatorLogin,
        image: tuple[Path, Manifest], signing_key: SigningKey) -> None:
    path, manifest = image
    data = path.read_bytes()
    answer = push(client, data, login=admin)
    assert answer.status_code == 201, answer.text
    document = answer.json()
    expected_id = image_id(manifest.canonical_text())
    sha256 = hashlib.sha256(data).hexdigest()
    assert document["id"] == expected_id
    assert (document["product"], document["version"], document["build"]) == ("demo", "1.0.0", 1)
    assert document["variants"] == ["qemu-lab"]
    assert document["payload"] == "rootfs-tar"
    assert document["key_ids"] == [signing_key.key_id]
    assert (document["sha256"], document["size"]) == (sha256, len(data))
    assert document["uploaded_by"] == "admin"
    assert document["mfg_path"] == f"images/{expected_id}.upd"

    listed = client.get("/api/v1/images", headers=admin.headers).json()["images"]
    assert [entry["id"] for entry in listed] == [expected_id]
    assert client.get(f"/api/v1/images/{expected_id}", headers=admin.headers).json() == document
    blob = store_dir(app) / "sha256" / sha256[:2] / sha256
    assert blob.read_bytes() == data
    digests = BlobStore(store_dir(app)).digests(sha256)
    assert digests.sha1 == hashlib.sha1(data).hexdigest()  # noqa: S324
    assert digests.md5 == hashlib.md5(data).hexdigest()  # noqa: S324
    assert list((store_dir(app) / "tmp").iterdir()) == []
    audits = [row for row in table_rows(app, "audit") if row["action"] == "image.push"]
    assert [row["target"] for row in audits] == [expected_id]
    assert audits[0]["actor"].startswith("user:admin")


def test_the_same_image_again_answers_200_and_changes_nothing(
        client: TestClient, app: FastAPI, admin: OperatorLogin,
        image: tuple[Path, Manifest]) -> None:
    path, _ = image
    first = pushed(client, path, admin)
    again = push(client, path.read_bytes(), login=admin)
    assert again.status_code == 200, again.text
    assert again.json() == first
    assert len(table_rows(app, "images")) == 1
    assert len([r for r in table_rows(app, "audit") if r["action"] == "image.push"]) == 1
    assert len(stored_blobs(store_dir(app))) == 1
    assert list((store_dir(app) / "tmp").iterdir()) == []


def test_list_is_newest_first_and_filters_by_product(
        client: TestClient, admin: OperatorLogin, tmp_path: Path,
        signing_key: SigningKey) -> None:
    ids = []
    for number, product in enumerate(["demo", "other", "demo"]):
        path, _ = build_test_image(tmp_path, [signing_key], product=product,
                                   version=f"1.{number}", seed=number)
        ids.append(pushed(client, path, admin)["id"])
    everything = client.get("/api/v1/images", headers=admin.headers).json()["images"]
    assert [entry["id"] for entry in everything] == ids[::-1]
    demos = client.get("/api/v1/images", params={"product": "demo"},
                       headers=admin.headers).json()["images"]
    assert [entry["id"] for entry in demos] == [ids[2], ids[0]]
    limited = client.get("/api/v1/images", params={"limit": 1}, headers=admin.headers)
    assert [entry["id"] for entry in limited.json()["images"]] == [ids[2]]


def test_download_with_ranges_and_validators(
        client: TestClient, admin: OperatorLogin, image: tuple[Path, Manifest]) -> None:
    path, manifest = image
    data = path.read_bytes()
    document = pushed(client, path, admin)
    url = f"/api/v1/images/{document['id']}/file"
    whole = client.get(url, headers=admin.headers)
    assert whole.status_code == 200
    assert whole.content == data
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    assert whole.headers["etag"] == etag
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(len(data))
    assert whole.headers["content-disposition"] == 'attachment; filename="demo-1.0.0-1.upd"'
    modified = whole.headers["last-modified"]
    assert modified.endswith(" GMT")

    head = client.head(url, headers=admin.headers)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["etag"] == etag

    def get(**headers: str) -> httpx.Response:
        answer: httpx.Response = client.get(url, headers={**admin.headers, **headers})
        return answer

    part = get(Range="bytes=100-199")
    assert part.status_code == 206
    assert part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert part.headers["content-length"] == "100"
    second_frame = manifest.frames[1]
    start = len(data) - manifest.compressed_size + second_frame.offset
    resumed = get(Range=f"bytes={start}-", **{"If-Range": etag})
    assert resumed.status_code == 206
    assert resumed.content == data[start:]
    assert get(Range="bytes=-10").content == data[-10:]
    assert get(Range="bytes=0-5", **{"If-Range": modified}).status_code == 206
    stale = get(Range="bytes=0-5", **{"If-Range": '"0000"'})
    assert (stale.status_code, stale.content) == (200, data)
    assert get(Range="bytes=0-5", **{"If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}) \
        .status_code == 200
    unsatisfiable = get(Range=f"bytes={len(data)}-")
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(data)}"
    assert get(Range="bytes=0-1,5-9").content == data  # several ranges: the whole file
    not_modified = get(**{"If-None-Match": etag})
    assert (not_modified.status_code, not_modified.content) == (304, b"")
    assert not_modified.headers["etag"] == etag
    assert get(**{"If-Match": '"other"'}).status_code == 412
    assert get(**{"If-Match": etag}).status_code == 200
    assert client.head(url, headers={**admin.headers, "Range": "bytes=0-9"}).headers[
        "content-length"] == "10"


def _unsigned(data: bytes, manifest: Manifest) -> bytes:
    envelope_end = len(data) - manifest.compressed_size
    return signed_envelope_for_text(manifest.canonical_text(), []) + data[envelope_end:]


def _tampered(data: bytes, manifest: Manifest) -> bytes:
    """One byte of frame 1 changed so that zstd still decodes it: only the sha256 tells."""
    start = len(data) - manifest.compressed_size + manifest.frames[1].offset
    frame = data[start:start + manifest.frames[1].length]
    return flip(data, start + silent_flip(frame, manifest.frame_output_size(1)))


def _altered_manifest(data: bytes, manifest: Manifest) -> bytes:
    text = manifest.canonical_text()
    envelope = data[:len(data) - manifest.compressed_size]
    altered = envelope.replace(b'\\"build\\":1', b'\\"build\\":9')
    assert altered != envelope and len(altered) == len(envelope) and text
    return altered + data[len(envelope):]


@pytest.fixture
def bad_upload(image: tuple[Path, Manifest], tmp_path: Path, other_key: SigningKey,
               signing_key: SigningKey) -> Callable[[str], bytes]:
    """The good image spoilt in the way named."""
    path, manifest = image
    data = path.read_bytes()

    def wrongly_signed() -> bytes:
        (tmp_path / "other").mkdir()
        return build_test_image(tmp_path / "other", [other_key])[0].read_bytes()

    spoilers: dict[str, Callable[[], bytes]] = {
        "unsigned": lambda: _unsigned(data, manifest),
        "tampered": lambda: _tampered(data, manifest),
        "wrongly signed": wrongly_signed,
        "garbage": lambda: bytes(range(256)) * 100,
        "truncated": lambda: data[:-100],
        "trailing bytes": lambda: data + b"extra",
        "manifest altered after signing": lambda: _altered_manifest(data, manifest),
        "manifest invalid": lambda: signed_envelope_for_text('{"manifest_version": 1}',
                                                             [signing_key]),
    }
    return lambda kind: spoilers[kind]()


@pytest.mark.parametrize("case", [
    ("unsigned", "none of those keys is trusted"),
    ("tampered", "sha256 mismatch"),
    ("wrongly signed", "none of those keys is trusted"),
    ("garbage", "not a Kiln image"),
    ("truncated", "frame"),
    ("trailing bytes", "unexpected bytes after the last frame"),
    ("manifest altered after signing", "does not match the manifest"),
    ("manifest invalid", "manifest"),
], ids=lambda case: case[0])
def test_a_bad_upload_is_refused_and_leaves_nothing(
        client: TestClient, app: FastAPI, admin: OperatorLogin,
        bad_upload: Callable[[str], bytes], case: tuple[str, str]) -> None:
    kind, problem = case
    body = bad_upload(kind)
    before = store_leftovers(store_dir(app))
    answer = push(client, body, login=admin)
    assert answer.status_code == 422, answer.text
    refusal = answer.json()
    assert problem in refusal["detail"] + " ".join(refusal.get("problems", []))
    assert table_rows(app, "images") == []
    assert [r for r in table_rows(app, "audit") if r["action"] == "image.push"] == []
    assert store_leftovers(store_dir(app)) == before == []


def test_an_image_of_only_garbage_frames_is_refused(
        client: TestClient, app: FastAPI, admin: OperatorLogin,
        signing_key: SigningKey) -> None:
    built = make_image_from_payload(bytes(200_000), signing_key)
    corrupt = flip(built.data, built.frame_start(0) + 1)  # breaks the zstd frame header
    answer = push(client, corrupt, login=admin)
    assert answer.status_code == 422
    assert "frame 0" in answer.json()["detail"]
    assert stored_blobs(store_dir(app)) == []


def test_an_empty_body_is_400(client: TestClient, app: FastAPI, admin: OperatorLogin) -> None:
    answer = push(client, b"", login=admin)
    assert answer.status_code == 400
    assert "empty" in answer.json()["detail"]
    assert store_leftovers(store_dir(app)) == []


def test_without_trusted_keys_uploads_are_refused(
        client: TestClient, app: FastAPI, admin: OperatorLogin,
        image: tuple[Path, Manifest]) -> None:
    config: ServerConfig = app.state.context.config
    for key in config.effective_trust_dir.iterdir():
        key.unlink()
    answer = push(client, image[0].read_bytes(), login=admin)
    assert answer.status_code == 409
    assert "trust directory" in answer.json()["detail"]
    assert store_leftovers(store_dir(app)) == []


def test_who_may_push_list_and_delete(
        client: TestClient, app: FastAPI, admin: OperatorLogin, reader: OperatorLogin,
        image: tuple[Path, Manifest]) -> None:
    data = image[0].read_bytes()
    nobody = push(client, data, login=None)
    assert nobody.status_code == 401
    assert nobody.headers["www-authenticate"].startswith("Bearer")
    assert push(client, data, login=reader).status_code == 403
    assert "images:write" in push(client, data, login=reader).json()["detail"]
    bogus = OperatorLogin("x", "", "kiln_notatoken_secret")
    assert push(client, data, login=bogus).status_code == 401
    assert table_rows(app, "images") == []
    assert store_leftovers(store_dir(app)) == []

    pusher = make_operator(app, "pusher", Scope.IMAGES_WRITE)
    document = push(client, data, login=pusher).json()
    assert client.get("/api/v1/images").status_code == 401
    assert client.get("/api/v1/images", headers=pusher.headers).status_code == 403
    assert client.get(f"/api/v1/images/{document['id']}/file").status_code == 401
    assert client.get(f"/api/v1/images/{document['id']}/file",
                      headers=reader.headers).status_code == 200
    assert client.delete(f"/api/v1/images/{document['id']}",
                         headers=reader.headers).status_code == 403
    assert len(table_rows(app, "images")) == 1


def test_delete_removes_the_row_and_an_unreferenced_blob(
        client: TestClient, app: FastAPI, admin: OperatorLogin,
        image: tuple[Path, Manifest]) -> None:
    path, _ = image
    document = pushed(client, path, admin)
    # a boot file with the very same bytes keeps the blob alive
    shared = client.put("/api/v1/files/same.upd", content=path.read_bytes(),
                        headers={**admin.headers, **OCTETS})
    assert shared.status_code == 201, shared.text
    gone = client.delete(f"/api/v1/images/{document['id']}", headers=admin.headers)
    assert gone.status_code == 204
    assert table_rows(app, "images") == []
    assert stored_blobs(store_dir(app)) == [document["sha256"]]
    assert client.get(f"/api/v1/images/{document['id']}", headers=admin.headers) \
        .status_code == 404
    assert client.delete(f"/api/v1/images/{document['id']}", headers=admin.headers) \
        .status_code == 404
    assert client.delete("/api/v1/files/same.upd", headers=admin.headers).status_code == 204
    assert stored_blobs(store_dir(app)) == []
    actions = [row["action"] for row in table_rows(app, "audit")]
    assert "image.delete" in actions


def test_malformed_image_ids_are_refused(client: TestClient, admin: OperatorLogin) -> None:
    for bad in ["abc", "../../etc/passwd", "%2e%2e", "G" * 64]:
        answer = client.get(f"/api/v1/images/{bad}", headers=admin.headers)
        assert 400 <= answer.status_code < 500, bad


def test_an_oversized_upload_is_413_and_leaves_nothing(
        server_config: ServerConfig, image: tuple[Path, Manifest]) -> None:
    config = replace(server_config, max_upload_bytes=50_000)
    prepare(config)
    small = create_app(config)
    try:
        admin = make_operator(small, "admin", Scope.ADMIN)
        with TestClient(small, base_url="http://kiln.test") as client:
            declared = push(client, image[0].read_bytes(), login=admin)
            assert declared.status_code == 413
            streamed = client.post(  # no Content-Length: the limit is found while receiving
                "/api/v1/images", headers={**admin.headers, **OCTETS},
                content=iter([image[0].read_bytes()[:30_000]] * 3))
            assert streamed.status_code == 413, streamed.text
            assert "limit" in streamed.json()["detail"]
    finally:
        small.state.context.engine.dispose()
    assert store_leftovers(config.store_dir) == []


def test_the_line_downloads_images_with_its_key(
        client: TestClient, admin: OperatorLogin, line: LineLogin,
        image: tuple[Path, Manifest]) -> None:
    path, _ = image
    data = path.read_bytes()
    document = pushed(client, path, admin)
    url = f"/mfg/{line.profile}/images/{document['id']}.upd"
    assert client.get(url, auth=line.auth).content == data
    head = client.head(url, auth=line.auth)
    assert (head.status_code, head.headers["content-length"]) == (200, str(len(data)))
    part = client.get(url, auth=line.auth, headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, data[10:20])
    assert client.get(url, auth=(line.profile, "wrong")).status_code == 401
    assert client.get(url).status_code == 401
    assert client.get(url, headers=admin.headers).status_code == 401
    other = f"/mfg/nosuch/images/{document['id']}.upd"
    assert client.get(other, auth=line.auth).status_code == 401
    missing = f"/mfg/{line.profile}/images/{'0' * 64}.upd"
    assert client.get(missing, auth=line.auth).status_code == 404


def test_the_store_removes_what_a_crash_left_at_start(server_config: ServerConfig) -> None:
    leftover = server_config.store_dir / "tmp" / "upload-crashed.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an image")
    prepare(server_config)
    assert not leftover.exists()


@pytest.mark.allow_commands("python")
def test_a_client_that_goes_away_mid_upload_leaves_nothing(
        tmp_path: Path, signing_dir: Path, image: tuple[Path, Manifest]) -> None:
    data_dir = tmp_path / "srv"
    (data_dir / "keys").mkdir(parents=True)
    (data_dir / "keys" / "test.pub").write_bytes((signing_dir / "test.pub").read_bytes())
    data = image[0].read_bytes()
    with LiveServer.start(data_dir=data_dir) as server:
        _password, token = server.admin()
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall(
                b"POST /api/v1/images HTTP/1.1\r\nHost: kiln\r\n"
                b"Authorization: Bearer " + token.encode() + b"\r\n"
                b"Content-Type: application/octet-stream\r\n"
                b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n"
                + data[:len(data) // 2])
            deadline = time.monotonic() + 10
            tmp_dir = data_dir / "store" / "tmp"
            while not any(tmp_dir.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert any(tmp_dir.iterdir()), "the upload never started"
        deadline = time.monotonic() + 10
        while any(tmp_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(tmp_dir.iterdir()) == []
        assert stored_blobs(data_dir / "store") == []
        listed = httpx.get(f"{server.url}/api/v1/images",
                           headers={"Authorization": f"Bearer {token}"})
        assert listed.json() == {"images": []}
        # and the server still takes the whole image afterwards
        answer = httpx.post(f"{server.url}/api/v1/images", content=data,
                            headers={"Authorization": f"Bearer {token}", **OCTETS})
        assert answer.status_code == 201, answer.text
        assert json.loads(answer.text)["size"] == len(data)
