"""Boot files on the server: stored by name, listed, downloaded by operators and by the
factory line (the iPXE script's URLs); names that could escape the store are refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.auth import Scope
from server.config import ServerConfig
from tests.server.conftest import LineLogin, OperatorLogin, make_operator
from tests.server.helpers import table_rows
from tests.server.signed_images import store_leftovers, stored_blobs

OCTETS = {"Content-Type": "application/octet-stream"}
KERNEL = b"MZ" + bytes(range(256)) * 300


def put(client: TestClient, name: str, *, data: bytes, login: OperatorLogin | None) \
        -> httpx.Response:
    headers = {**OCTETS, **(login.headers if login else {})}
    answer: httpx.Response = client.put(f"/api/v1/files/{name}", content=data, headers=headers)
    return answer


def store_dir(app: FastAPI) -> Path:
    config: ServerConfig = app.state.context.config
    return config.store_dir


def test_a_file_is_stored_replaced_and_listed(client: TestClient, app: FastAPI,
                                              admin: OperatorLogin) -> None:
    created = put(client, "vmlinuz", data=KERNEL, login=admin)
    assert created.status_code == 201, created.text
    first = created.json()
    assert first["sha256"] == hashlib.sha256(KERNEL).hexdigest()
    assert (first["name"], first["size"], first["mfg_path"]) == ("vmlinuz", len(KERNEL),
                                                                 "files/vmlinuz")
    same = put(client, "vmlinuz", data=KERNEL, login=admin)
    assert (same.status_code, same.json()) == (200, first)

    newer = KERNEL + b"v2"
    replaced = put(client, "vmlinuz", data=newer, login=admin)
    assert replaced.status_code == 200
    assert replaced.json()["sha256"] == hashlib.sha256(newer).hexdigest()
    assert stored_blobs(store_dir(app)) == [hashlib.sha256(newer).hexdigest()]
    assert put(client, "initrd.zst", data=b"ramdisk", login=admin).status_code == 201
    listed = client.get("/api/v1/files", headers=admin.headers).json()["files"]
    assert [(entry["name"], entry["size"]) for entry in listed] == [
        ("initrd.zst", 7), ("vmlinuz", len(newer))]
    assert client.get("/api/v1/files/vmlinuz", headers=admin.headers).content == newer
    puts = [row for row in table_rows(app, "audit") if row["action"] == "file.put"]
    assert [row["target"] for row in puts] == ["vmlinuz", "vmlinuz", "initrd.zst"]


def test_download_headers_ranges_and_head(client: TestClient, admin: OperatorLogin,
                                          reader: OperatorLogin) -> None:
    put(client, "vmlinuz", data=KERNEL, login=admin)
    url = "/api/v1/files/vmlinuz"
    whole = client.get(url, headers=reader.headers)
    assert whole.content == KERNEL
    assert whole.headers["content-disposition"] == 'attachment; filename="vmlinuz"'
    assert whole.headers["etag"] == f'"{hashlib.sha256(KERNEL).hexdigest()}"'
    head = client.head(url, headers=reader.headers)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(KERNEL))
    tail = client.get(url, headers={**reader.headers, "Range": "bytes=-100"})
    assert (tail.status_code, tail.content) == (206, KERNEL[-100:])
    since = client.get(url, headers={**reader.headers,
                                     "If-Modified-Since": whole.headers["last-modified"]})
    assert since.status_code == 304
    assert client.get("/api/v1/files/nosuch", headers=reader.headers).status_code == 404
    assert client.head("/api/v1/files/nosuch", headers=reader.headers).status_code == 404


@pytest.mark.parametrize("name", [
    "../x", "..%2fx", "%2e%2e", "%2e%2e%2fetc%2fpasswd", "a/b", "a%2fb", ".hidden", "..",
    "x" * 129, "a%00b", "a b", "-dash",
])
def test_names_that_could_escape_are_refused_and_write_nothing(
        client: TestClient, app: FastAPI, admin: OperatorLogin, tmp_path: Path,
        name: str) -> None:
    answer = client.put(f"/api/v1/files/{name}", content=b"evil",
                        headers={**admin.headers, **OCTETS})
    assert 400 <= answer.status_code < 500, (name, answer.status_code)
    assert table_rows(app, "files") == []
    assert store_leftovers(store_dir(app)) == []
    config: ServerConfig = app.state.context.config
    written = [path for path in config.data_dir.parent.rglob("*")
               if path.is_file() and path.read_bytes() == b"evil"]
    assert written == []


def test_the_encoded_dot_dot_reaches_the_route_and_fails_its_pattern(
        client: TestClient, admin: OperatorLogin) -> None:
    answer = client.put("/api/v1/files/%2e%2e", content=b"evil",
                        headers={**admin.headers, **OCTETS})
    assert answer.status_code == 422


def test_only_manufdata_writers_put_files(client: TestClient, app: FastAPI,
                                          admin: OperatorLogin, reader: OperatorLogin) -> None:
    assert put(client, "vmlinuz", data=KERNEL, login=None).status_code == 401
    assert put(client, "vmlinuz", data=KERNEL, login=reader).status_code == 403
    pusher = make_operator(app, "pusher", Scope.IMAGES_WRITE)
    assert put(client, "vmlinuz", data=KERNEL, login=pusher).status_code == 403
    writer = make_operator(app, "writer", Scope.MANUFDATA_WRITE)
    assert put(client, "vmlinuz", data=KERNEL, login=writer).status_code == 201
    assert client.get("/api/v1/files").status_code == 401
    assert client.delete("/api/v1/files/vmlinuz", headers=reader.headers).status_code == 403
    assert client.delete("/api/v1/files/vmlinuz", headers=writer.headers).status_code == 204
    assert client.delete("/api/v1/files/vmlinuz", headers=writer.headers).status_code == 404
    assert table_rows(app, "files") == []
    assert stored_blobs(store_dir(app)) == []


def test_the_line_fetches_boot_files_with_its_key(
        client: TestClient, admin: OperatorLogin, line: LineLogin) -> None:
    put(client, "vmlinuz", data=KERNEL, login=admin)
    put(client, "initrd.zst", data=b"ramdisk", login=admin)
    script = client.get(f"/mfg/{line.profile}/boot.ipxe", auth=line.auth).text
    kernel_line = next(text for text in script.splitlines() if text.startswith("kernel "))
    url = httpx.URL(kernel_line.split()[1])
    assert url.path == f"/mfg/{line.profile}/files/vmlinuz"
    assert client.get(url.path, auth=(url.username, url.password)).content == KERNEL
    initrd = client.get(f"/mfg/{line.profile}/files/initrd.zst", auth=line.auth)
    assert (initrd.status_code, initrd.content) == (200, b"ramdisk")
    part = client.get(f"/mfg/{line.profile}/files/vmlinuz", auth=line.auth,
                      headers={"Range": "bytes=0-1"})
    assert (part.status_code, part.content) == (206, b"MZ")
    assert client.head(f"/mfg/{line.profile}/files/vmlinuz", auth=line.auth) \
        .headers["content-length"] == str(len(KERNEL))
    assert client.get(f"/mfg/{line.profile}/files/vmlinuz",
                      auth=(line.profile, "wrong")).status_code == 401
    assert client.get(f"/mfg/{line.profile}/files/vmlinuz").status_code == 401
    assert client.get(f"/mfg/{line.profile}/files/vmlinuz",
                      headers=admin.headers).status_code == 401
    assert client.get(f"/mfg/{line.profile}/files/nosuch", auth=line.auth).status_code == 404
    assert client.get(f"/mfg/{line.profile}/files/%2e%2e", auth=line.auth).status_code == 422
