"""Server test fixtures: an application on SQLite or on the real PostgreSQL that
`tools/test` starts (`KILN_TEST_POSTGRES_URL`), operators, tokens and a profile.

`database_url` is parametrised: every test that uses it (through `app`/`client`) runs on
both databases; the PostgreSQL run carries the `postgres` marker. On PostgreSQL one database
is made per session and every table emptied before each test.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from server import crypto
from server.accounts import create_token, create_user
from server.app import create_app, prepare
from server.auth import Scope
from server.config import ServerConfig
from server.db.engine import make_engine
from server.db.migrate import upgrade
from server.db.schema import metadata

EXAMPLE_MANUFDATA = Path(__file__).parents[2] / "kiln" / "manufdata-example.json"


def postgres_admin_url() -> str:
    url = os.environ.get("KILN_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("KILN_TEST_POSTGRES_URL is not set: run the tests with tools/test, which "
                    "starts PostgreSQL (tools/postgres prints the URL to export)")
    return url


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own for this test session, migrated once."""
    admin_url = make_url(postgres_admin_url())
    name = f"kiln_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_postgres(url: str) -> None:
    """DELETE, not TRUNCATE: on these small tables it is ten times faster (TRUNCATE makes new
    files for every table); the id sequences restart as TRUNCATE … RESTART IDENTITY would."""
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(table.delete())
        for (name,) in connection.execute(text(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'")):
            connection.execute(text(f'ALTER SEQUENCE "{name}" RESTART'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""  # the embedded default: SQLite in the data directory
    url: str = request.getfixturevalue("postgres_database")
    _empty_postgres(url)
    return url


@pytest.fixture
def server_config(tmp_path: Path, database_url: str, signing_dir: Path) -> ServerConfig:
    config = ServerConfig(data_dir=tmp_path / "server", database_url=database_url,
                          public_url="http://kiln.test")
    config.effective_trust_dir.mkdir(parents=True)
    shutil.copy(signing_dir / "test.pub", config.effective_trust_dir / "test.pub")
    return config


@pytest.fixture
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Operator passwords hashed at a tiny scrypt cost: the tests make hundreds of operators
    (≈45 ms each at the real cost). Verifying reads the cost from the stored hash, so nothing
    else changes; tests/server/test_crypto.py checks the real cost."""
    monkeypatch.setattr(crypto, "_SCRYPT_N", 2**4)


@pytest.fixture
def app(server_config: ServerConfig, fast_password_hashing: None) -> Iterator[FastAPI]:
    prepare(server_config)
    application = create_app(server_config)
    yield application
    application.state.context.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://kiln.test") as test_client:
        yield test_client


@dataclass(frozen=True)
class OperatorLogin:
    username: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_operator(app: FastAPI, username: str, *scopes: Scope) -> OperatorLogin:
    with app.state.context.engine.begin() as connection:
        user = create_user(connection, username=username, scopes=scopes)
        _token_id, token = create_token(connection, user_id=user.user_id, name="test",
                                        scopes=scopes)
    return OperatorLogin(username, user.password, token)


@pytest.fixture
def admin(app: FastAPI) -> OperatorLogin:
    return make_operator(app, "admin", Scope.ADMIN)


@pytest.fixture
def reader(app: FastAPI) -> OperatorLogin:
    return make_operator(app, "reader", Scope.UNITS_READ)


def example_manufdata() -> dict[str, object]:
    document: dict[str, object] = json.loads(EXAMPLE_MANUFDATA.read_text())
    document.pop("server", None)
    return document


@dataclass(frozen=True)
class LineLogin:
    profile: str
    key: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.profile, self.key)


@pytest.fixture
def line(client: TestClient, admin: OperatorLogin) -> LineLogin:
    """A profile `line1` made from the example manufData, and its line key."""
    answer = client.put("/api/v1/profiles/line1", headers=admin.headers, json={
        "manufdata": example_manufdata(), "kernel_file": "vmlinuz",
        "initrd_file": "initrd.zst"})
    assert answer.status_code == 201, answer.text
    return LineLogin("line1", answer.json()["line_key"])
