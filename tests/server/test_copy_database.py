"""Moving from the embedded SQLite to PostgreSQL keeps every record, and the copy goes on
working (ids continue past the copied ones)."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from kiln.cli import main
from server.app import create_app, prepare
from server.config import ServerConfig
from server.db.schema import metadata
from tests.server.conftest import LineLogin, OperatorLogin, postgres_admin_url


@pytest.fixture
def database_url() -> str:
    """The source of the copy is the embedded SQLite (this overrides the parametrised one)."""
    return ""


def _counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as connection:
        counts = {table.name: connection.execute(select(func.count()).select_from(table))
                  .scalar() or 0 for table in metadata.sorted_tables}
    engine.dispose()
    return counts


def _event(serial: str, seq: int, **fields: object) -> dict[str, object]:
    return {"serial": serial, "run_id": "run-" + serial, "seq": seq,
            "timestamp_ns": 1_000 + seq, "type": "log", "name": "manufacture",
            "message": f"line {seq}", "level": "info"} | fields


@pytest.mark.postgres
def test_copy_from_sqlite_to_postgres(client: TestClient, admin: OperatorLogin, line: LineLogin,
                                      server_config: ServerConfig, *,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    report = {"serial": "SN-COPY-1", "variant": "std", "macs": ["52:54:00:00:00:01"]}
    assert client.post("/mfg/line1/units", json=report, auth=line.auth).status_code == 201
    events = [_event("SN-COPY-1", seq) for seq in range(5)]
    assert client.post("/api/v1/events", json={"events": events}, auth=line.auth).is_success

    admin_url = make_url(postgres_admin_url())
    name = f"kiln_copy_{uuid.uuid4().hex[:8]}"
    server = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    target = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        arguments = ["server", "--data-dir", str(server_config.data_dir), "copy-database",
                     "--to", target]
        assert main(arguments) == 0
        assert "events" in capsys.readouterr().out
        assert _counts(target) == _counts(server_config.effective_database_url)
        assert main(arguments) == 1  # the target is no longer empty: refused
        assert "not empty" in capsys.readouterr().err

        moved = ServerConfig(data_dir=server_config.data_dir, database_url=target,
                             public_url="http://kiln.test")
        prepare(moved)
        app = create_app(moved)
        with TestClient(app, base_url="http://kiln.test") as on_postgres:
            more = [_event("SN-COPY-1", seq) for seq in range(5, 8)]
            answer = on_postgres.post("/api/v1/events", json={"events": more}, auth=line.auth)
            assert answer.json() == {"accepted": 3, "duplicates": 0}
            timeline = on_postgres.get("/api/v1/units/SN-COPY-1/events",
                                       headers=admin.headers).json()["events"]
            assert [event["seq"] for event in timeline] == list(range(8))
        app.state.context.engine.dispose()
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        server.dispose()
