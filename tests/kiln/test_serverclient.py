"""The appliance's client against a real `kiln server` over HTTPS: manufData, the CA it
pins, the unit report, credentials and the device-side event spool flushed to the server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from kiln.events import EventRecorder, Level, Result
from kiln.serverclient import ServerClient, ServerError, UnitReport
from tests.server.conftest import example_manufdata
from tests.server.live import LiveServer, free_port
from tests.server.tls import TlsFiles, make_tls_files

pytestmark = pytest.mark.allow_commands("python")


@dataclass(frozen=True)
class TlsServer:
    server: LiveServer
    tls: TlsFiles
    token: str
    line_key: str

    @property
    def mfgurl(self) -> str:
        return (f"https://line1:{self.line_key}@127.0.0.1:{self.server.port}"
                "/mfg/line1/manufData.json")


def _start(tmp_path: Path, *, named_ca: Path | None = None) -> TlsServer:
    tls = make_tls_files(tmp_path / "tls")
    port = free_port()
    server = LiveServer(data_dir=tmp_path / "server", port=port, extra_args=(
        "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
        "--ca-cert", str(named_ca or tls.ca), "--public-url", f"https://127.0.0.1:{port}"))
    server.run()
    _password, token = server.admin()
    answer = requests.put(f"{server.url}/api/v1/profiles/line1", verify=str(tls.ca), timeout=30,
                          headers={"Authorization": f"Bearer {token}"},
                          json={"manufdata": example_manufdata()})
    assert answer.status_code == 201, answer.text
    return TlsServer(server, tls, token, answer.json()["line_key"])


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    running = _start(tmp_path_factory.mktemp("tls"))
    with running.server:
        yield running


def test_manufacture_conversation_over_https(tls_server: TlsServer, tmp_path: Path) -> None:
    with ServerClient(tls_server.mfgurl, verify=str(tls_server.tls.ca)) as client:
        manufdata = client.manufdata()
        assert manufdata.server is not None
        assert manufdata.server.ca_pem == tls_server.tls.ca.read_text()
        assert client.verify != str(tls_server.tls.ca)  # now pinned to manufData's copy
        assert "line_key" not in client.url_of("images/x.upd")
        assert client.url_of("images/x.upd").endswith("/mfg/line1/images/x.upd")

        client.report_unit(UnitReport(serial="SN-TLS-1", variant="std",
                                      dmi={"sys_vendor": "QEMU"}, macs=["52:54:00:12:34:56"],
                                      hardware={"disks": []}))
        recorder = EventRecorder(serial="SN-TLS-1", spool_dir=tmp_path / "spool")
        recorder.start("manufacture")
        recorder.log("manufacture", Level.INFO, "hello over TLS")
        assert recorder.spool.flush(client.send_events) == 2
        credentials = client.credentials("SN-TLS-1")  # the server saw manufacture start
        assert len(credentials.admin_password) >= 20
        assert credentials.device_token.startswith("kilndev_")
        recorder.finish("manufacture", Result.SUCCESS)
        assert recorder.spool.flush(client.send_events) == 1
        assert recorder.spool.flush(client.send_events) == 0  # all acknowledged

    answer = requests.get(f"{tls_server.server.url}/api/v1/units/SN-TLS-1",
                          headers={"Authorization": f"Bearer {tls_server.token}"},
                          verify=str(tls_server.tls.ca), timeout=30).json()
    assert (answer["lifecycle"], answer["status"]) == ("manufacture", "succeeded")


def test_the_server_is_verified(tls_server: TlsServer) -> None:
    with ServerClient(tls_server.mfgurl, verify=True) as client, \
            pytest.raises(ServerError, match="certificate does not verify"):
        client.manufdata()  # the system's CAs do not know the factory's CA


def test_a_wrong_line_key_is_refused(tls_server: TlsServer) -> None:
    mfgurl = tls_server.mfgurl.replace(tls_server.line_key, "wrong")
    with ServerClient(mfgurl, verify=str(tls_server.tls.ca)) as client, \
            pytest.raises(ServerError, match="401") as refused:
        client.manufdata()
    assert refused.value.status == 401
    assert "wrong line key" in str(refused.value)


def test_the_ca_manufdata_names_is_the_only_one_trusted(tmp_path: Path) -> None:
    """manufData names a CA that did not sign the server's certificate: after reading it the
    client trusts only that CA, so the next request fails."""
    other = make_tls_files(tmp_path / "other", ca_name="another CA")
    running = _start(tmp_path, named_ca=other.ca)
    with running.server, ServerClient(running.mfgurl, verify=str(running.tls.ca)) as client:
        client.manufdata()
        with pytest.raises(ServerError, match="the CA manufData names"):
            client.report_unit(UnitReport(serial="SN-X", variant=None, dmi={}, macs=[],
                                          hardware={}))
