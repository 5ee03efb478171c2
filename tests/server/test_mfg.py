"""What a factory line fetches and sends under /mfg/{profile}/: manufData with the server's
endpoints filled in, the iPXE script, and unit reports; all behind the profile's line key."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiln.manufdata import load_manufdata
from server.app import create_app, prepare
from server.config import ServerConfig
from tests.server.conftest import LineLogin, OperatorLogin, example_manufdata
from tests.server.helpers import table_rows
from tests.server.tls import make_tls_files


def test_manufdata_has_the_servers_endpoints_and_validates(client: TestClient,
                                                           line: LineLogin) -> None:
    answer = client.get("/mfg/line1/manufData.json", auth=line.auth)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["etag"] == '"line1-1"'
    manufdata = load_manufdata(answer.content)
    assert manufdata.server is not None
    assert manufdata.server.events_url == "http://kiln.test/api/v1/events"
    assert manufdata.server.units_url == "http://kiln.test/mfg/line1/units"
    assert manufdata.server.credentials_url == "http://kiln.test/mfg/line1/credentials"
    assert manufdata.server.ca_pem is None
    document = answer.json()
    del document["server"]
    assert document == example_manufdata()


def test_manufdata_needs_the_profiles_line_key(client: TestClient, line: LineLogin,
                                               admin: OperatorLogin) -> None:
    url = "/mfg/line1/manufData.json"
    missing = client.get(url)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Basic realm="kiln line1"'
    assert client.get(url, auth=("line1", "wrong")).status_code == 401
    assert client.get(url, auth=("line2", line.key)).status_code == 401
    assert client.get(url, headers=admin.headers).status_code == 401
    assert client.get("/mfg/nope/manufData.json", auth=("nope", line.key)).status_code == 401


@pytest.fixture
def app_with_ca(server_config: ServerConfig, tmp_path: Path) -> Iterator[FastAPI]:
    config = dataclasses.replace(server_config, ca_cert=make_tls_files(tmp_path).ca,
                                 public_url="https://kiln.example:8443")
    prepare(config)
    application = create_app(config)
    yield application
    application.state.context.engine.dispose()


def test_manufdata_names_the_ca_and_the_public_url(app_with_ca: FastAPI,
                                                   admin: OperatorLogin) -> None:
    with TestClient(app_with_ca, base_url="http://internal:8080") as client:
        key = client.put("/api/v1/profiles/line1", headers=admin.headers,
                         json={"manufdata": example_manufdata()}).json()["line_key"]
        answer = client.get("/mfg/line1/manufData.json", auth=("line1", key))
    manufdata = load_manufdata(answer.content)
    assert manufdata.server is not None
    assert manufdata.server.events_url == "https://kiln.example:8443/api/v1/events"
    assert manufdata.server.ca_pem is not None
    assert manufdata.server.ca_pem.startswith("-----BEGIN CERTIFICATE-----")


def test_the_ipxe_script_boots_the_ramdisk_with_mfgurl(client: TestClient,
                                                       line: LineLogin) -> None:
    answer = client.get("/mfg/line1/boot.ipxe", auth=line.auth)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    lines = answer.text.splitlines()
    assert lines[0] == "#!ipxe"
    authority = f"http://line1:{line.key}@kiln.test"
    kernel = next(text for text in lines if text.startswith("kernel "))
    words = kernel.split()
    assert words[1] == f"{authority}/mfg/line1/files/vmlinuz"
    assert "initrd=initrd.zst" in words
    assert "console=ttyS0,115200" in words
    assert f"mfgurl={authority}/mfg/line1/manufData.json" in words
    assert f"initrd --name initrd.zst {authority}/mfg/line1/files/initrd.zst" in lines
    assert lines[-1] == "boot"


def test_the_ipxe_script_needs_boot_files_and_the_line_key(
        client: TestClient, line: LineLogin, admin: OperatorLogin) -> None:
    assert client.get("/mfg/line1/boot.ipxe").status_code == 401
    assert client.get("/mfg/line1/boot.ipxe", auth=("line1", "x")).status_code == 401
    key = client.put("/api/v1/profiles/bare", headers=admin.headers,
                     json={"manufdata": example_manufdata()}).json()["line_key"]
    answer = client.get("/mfg/bare/boot.ipxe", auth=("bare", key))
    assert answer.status_code == 409
    assert "kernel_file" in answer.json()["detail"]


# --- unit reports ----------------------------------------------------------------------------

def test_a_unit_reports_itself_and_reports_again(client: TestClient, app: FastAPI,
                                                 line: LineLogin,
                                                 reader: OperatorLogin) -> None:
    report = {"serial": "SN-1", "variant": "qemu-lab", "macs": ["52:54:00:12:34:AB"],
              "dmi": {"sys_vendor": "QEMU"}, "hardware": {"disks": [{"size": 1}]}}
    first = client.post("/mfg/line1/units", auth=line.auth, json=report)
    assert first.status_code == 201, first.text
    assert first.json() == {"serial": "SN-1", "profile": "line1"}
    again = client.post("/mfg/line1/units", auth=line.auth,
                        json=report | {"variant": "edge-100"})
    assert again.status_code == 200
    record = client.get("/api/v1/units/SN-1", headers=reader.headers).json()
    assert record["macs"] == ["52:54:00:12:34:ab"]
    assert record["variant"] == "edge-100"
    assert record["hardware"] == {"disks": [{"size": 1}]}
    assert len(table_rows(app, "units")) == 1
    audit = [(row["actor"], row["action"]) for row in table_rows(app, "audit")]
    assert audit.count(("line:line1", "unit.report")) == 2


@pytest.mark.parametrize(("report", "status"), [
    ({"serial": "bad serial"}, 422),
    ({"serial": ""}, 422),
    ({"serial": "../../etc"}, 422),
    ({"serial": "S" * 129}, 422),
    ({"serial": "SN-1", "variant": "Upper"}, 422),
    ({"serial": "SN-1", "macs": ["52:54:00:12:34", "zz:54:00:12:34:56"]}, 422),
    ({"serial": "SN-1", "unknown": 1}, 422),
    ({"serial": "SN-1", "dmi": {"a": 1}}, 422),
    ({"serial": "SN-1", "hardware": {"blob": "x" * 300_000}}, 413),
])
def test_a_bad_unit_report_is_refused_and_stores_nothing(
        client: TestClient, app: FastAPI, line: LineLogin, report: dict[str, object],
        status: int) -> None:
    answer = client.post("/mfg/line1/units", auth=line.auth, json=report)
    assert answer.status_code == status, answer.text
    assert table_rows(app, "units") == []


def test_bad_mac_addresses_are_each_named(client: TestClient, line: LineLogin) -> None:
    answer = client.post("/mfg/line1/units", auth=line.auth, json={
        "serial": "SN-1", "macs": ["52:54:00:12:34", "52:54:00:12:34:56", "nope"]})
    assert answer.status_code == 422
    assert answer.json()["problems"] == ["52:54:00:12:34", "nope"]


def test_a_unit_report_needs_the_line_key(client: TestClient, app: FastAPI,
                                          line: LineLogin) -> None:
    body = {"serial": "SN-1"}
    assert client.post("/mfg/line1/units", json=body).status_code == 401
    assert client.post("/mfg/line1/units", json=body, auth=("line1", "no")).status_code == 401
    assert client.post("/mfg/other/units", json=body, auth=line.auth).status_code == 401
    assert table_rows(app, "units") == []


def test_manufdata_served_is_the_latest_revision(client: TestClient, line: LineLogin,
                                                 admin: OperatorLogin) -> None:
    changed = example_manufdata() | {"product": "acme-core"}
    client.put("/api/v1/profiles/line1", headers=admin.headers, json={"manufdata": changed})
    answer = client.get("/mfg/line1/manufData.json", auth=line.auth)
    assert answer.headers["etag"] == '"line1-2"'
    assert json.loads(answer.text)["product"] == "acme-core"


def test_a_nul_in_the_profile_or_its_basic_name_is_401_not_500(client: TestClient,
                                                               line: LineLogin) -> None:
    """Base64 carries any byte, and PostgreSQL cannot even compare a NUL."""
    assert client.get("/mfg/a%00b/manufData.json", auth=("a\x00b", line.key)).status_code == 401
    assert client.post("/mfg/line1/units", auth=("line1\x00", line.key),
                       json={"serial": "SN-1"}).status_code == 401
