"""`kiln server`, `kiln server migrate` and `kiln server create-admin`, run in-process through
`kiln.cli.main`; and one real server over HTTPS."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import select

from kiln.cli import main
from server import commands
from server.app import create_app
from server.config import ENVIRONMENT_KEY, ConfigError, ServerConfig
from server.crypto import verify_password
from server.db.schema import users
from tests.server.live import LiveServer
from tests.server.tls import make_tls_files


def server_argv(data_dir: Path, database_url: str = "") -> list[str]:
    return ["server", "--data-dir", str(data_dir)] + (
        ["--database-url", database_url] if database_url else [])


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands here must never get as far as starting uvicorn."""
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("uvicorn.run was called")

    monkeypatch.setattr(uvicorn, "run", refuse)


def output_values(text: str) -> list[str]:
    return [line.rsplit(": ", 1)[1] for line in text.splitlines() if ": " in line]


def test_migrate_and_create_admin(tmp_path: Path, database_url: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "server"
    argv = server_argv(data_dir, database_url)
    assert main([*argv, "migrate"]) == 0
    assert "database schema at revision" in capsys.readouterr().out
    assert stat.S_IMODE((data_dir / "secret.key").stat().st_mode) == 0o600

    assert main([*argv, "create-admin", "boss"]) == 0
    username, password, token = output_values(capsys.readouterr().out)
    assert username == "boss"
    assert token.startswith("kiln_")

    assert main([*argv, "create-admin", "boss"]) == 1
    assert "operator 'boss' exists" in capsys.readouterr().err

    application = create_app(ServerConfig(data_dir=data_dir, database_url=database_url))
    try:
        with TestClient(application) as client:
            me = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200, me.text
            assert (me.json()["username"], me.json()["scopes"]) == ("boss", ["admin"])
        with application.state.context.engine.connect() as connection:
            stored = connection.execute(select(users.c.password_hash)).scalars().all()
    finally:
        application.state.context.engine.dispose()
    assert len(stored) == 1
    assert verify_password(password, stored[0])


@pytest.mark.usefixtures("no_serving")
def test_several_workers_on_sqlite_are_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*server_argv(tmp_path / "server"), "--workers", "2"]) == 1
    assert "SQLite takes one worker" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="SQLite takes one worker"):
        ServerConfig(data_dir=tmp_path, workers=2).validate()


@pytest.mark.usefixtures("no_serving")
@pytest.mark.parametrize(("arguments", "message"), [
    (["--listen", "8080"], "expected HOST:PORT"),
    (["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], "no such file"),
    (["--public-url", "kiln.example"], "must start with http(s)://"),
    (["--database-url", "mysql://kiln@db/kiln"], "unsupported database URL"),
    (["--workers", "0"], "at least 1"),
])
def test_bad_settings_are_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str],
        message: str) -> None:
    assert main([*server_argv(tmp_path / "server"), *arguments]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "server" / "secret.key").exists()


@pytest.mark.usefixtures("no_serving")
def test_a_server_key_others_can_read_is_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "server"
    assert main([*server_argv(data_dir), "migrate"]) == 0
    (data_dir / "secret.key").chmod(0o644)
    capsys.readouterr()
    for subcommand in (["migrate"], ["create-admin", "boss"], []):
        assert main([*server_argv(data_dir), *subcommand]) == 1
        assert "chmod 600" in capsys.readouterr().err


def test_the_settings_reach_the_workers_unchanged(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServerConfig(data_dir=tmp_path, database_url="postgresql+psycopg://k@h/d",
                          port=9443, workers=4, public_url="https://kiln.example",
                          tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    monkeypatch.setenv(ENVIRONMENT_KEY, config.to_environment())
    assert ServerConfig.from_environment() == config
    monkeypatch.delenv(ENVIRONMENT_KEY)
    with pytest.raises(ConfigError, match=ENVIRONMENT_KEY):
        ServerConfig.from_environment()


def test_the_default_data_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KILN_SERVER_DATA", str(tmp_path))
    assert commands.default_data_dir() == tmp_path
    monkeypatch.delenv("KILN_SERVER_DATA")
    expected = (Path("/var/lib/kiln/server") if os.geteuid() == 0
                else Path.home() / ".local/share/kiln/server")
    assert commands.default_data_dir() == expected


@pytest.mark.allow_commands("python")
def test_the_server_speaks_https_with_its_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    with LiveServer.start(data_dir=tmp_path / "server",
                          extra_args=("--tls-cert", str(tls.cert),
                                      "--tls-key", str(tls.key))) as server:
        assert server.url.startswith("https://")
        # Connection: close, or the server's graceful shutdown waits 20 s for this client's
        # idle TLS connection to say goodbye
        answer = requests.get(server.url + "/healthz", verify=str(tls.ca), timeout=10,
                              headers={"Connection": "close"})
        assert answer.status_code == 200
        assert answer.json()["status"] == "ok"
        # the CA is in no system store: an ordinary client refuses it (and closes
        # its socket at once, or the server's graceful shutdown would wait for it)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
