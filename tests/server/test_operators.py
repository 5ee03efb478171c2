"""Operators and their API tokens: who am I, tokens with a subset of one's scopes, revocation,
expiry, disabled operators, web sessions with CSRF, and the admin-only user list."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from server.auth import SESSION_COOKIE, Scope
from server.context import now_ns
from server.crypto import digest, verify_password
from server.db.schema import api_tokens, sessions, users
from tests.server.conftest import OperatorLogin, make_operator
from tests.server.helpers import database_text, table_rows


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_token(client: TestClient, who: OperatorLogin, *scopes: str, **extra: Any) -> Any:
    return client.post("/api/v1/tokens", headers=who.headers,
                       json={"name": "ci", "scopes": list(scopes)} | extra)


def whoami(client: TestClient, token: str) -> Any:
    return client.get("/api/v1/whoami", headers=bearer(token))


def test_whoami(client: TestClient, reader: OperatorLogin) -> None:
    answer = client.get("/api/v1/whoami", headers=reader.headers)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["username"], body["scopes"]) == ("reader", ["units:read"])
    assert reader.token.startswith(f"kiln_{body['token_id']}_")
    assert client.get("/api/v1/whoami").status_code == 401


@pytest.mark.parametrize("header", ["Bearer kiln_short_x", "Bearer kiln_0123456789abcdef_",
                                    "Bearer kiln_0123456789abcdef_wrong", "Bearer other",
                                    "Token abc", "Bearer "])
def test_malformed_or_unknown_tokens_are_401(client: TestClient, reader: OperatorLogin,
                                             header: str) -> None:
    answer = client.get("/api/v1/whoami", headers={"Authorization": header})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_a_wrong_secret_for_a_real_token_id_is_401(client: TestClient,
                                                   reader: OperatorLogin) -> None:
    token_id = reader.token.split("_")[1]
    assert whoami(client, f"kiln_{token_id}_not-the-secret").status_code == 401


def test_tokens_carry_a_subset_of_the_makers_scopes(client: TestClient, app: FastAPI,
                                                    reader: OperatorLogin,
                                                    admin: OperatorLogin) -> None:
    made = new_token(client, reader, "units:read")
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    assert whoami(client, made.json()["token"]).json()["scopes"] == ["units:read"]
    for scope in ("admin", "credentials:reveal"):
        refused = new_token(client, reader, "units:read", scope)
        assert refused.status_code == 403
        assert scope in refused.json()["detail"]
    assert new_token(client, reader, "no:such").status_code == 422
    assert new_token(client, reader).status_code == 422

    narrow = new_token(client, admin, "units:read").json()["token"]
    assert client.get("/api/v1/users", headers=bearer(narrow)).status_code == 403
    assert client.get("/api/v1/units", headers=bearer(narrow)).status_code == 200
    created = [row for row in table_rows(app, "audit") if row["action"] == "token.create"]
    assert len(created) == 2


def test_a_revoked_token_stops_working(client: TestClient, reader: OperatorLogin,
                                       admin: OperatorLogin) -> None:
    made = new_token(client, reader, "units:read").json()
    assert whoami(client, made["token"]).status_code == 200
    url = f"/api/v1/tokens/{made['id']}"
    assert client.delete(url, headers=reader.headers).json() == {"id": made["id"],
                                                                 "revoked": True}
    assert whoami(client, made["token"]).status_code == 401
    assert client.delete(url, headers=reader.headers).status_code == 404
    assert client.delete("/api/v1/tokens/not-an-id", headers=reader.headers).status_code == 422

    # another operator's token: only an admin may revoke it
    admins = new_token(client, admin, "units:read").json()
    assert client.delete(f"/api/v1/tokens/{admins['id']}",
                         headers=reader.headers).status_code == 404
    assert whoami(client, admins["token"]).status_code == 200
    theirs = new_token(client, reader, "units:read").json()
    assert client.delete(f"/api/v1/tokens/{theirs['id']}",
                         headers=admin.headers).status_code == 200
    assert whoami(client, theirs["token"]).status_code == 401


def test_a_token_expires(client: TestClient, app: FastAPI, reader: OperatorLogin) -> None:
    made = new_token(client, reader, "units:read", expires_days=1).json()
    day = 86400 * 10**9
    assert now_ns() + day - 60 * 10**9 < made["expires_ns"] <= now_ns() + day
    assert whoami(client, made["token"]).status_code == 200
    with app.state.context.engine.begin() as connection:
        connection.execute(update(api_tokens).where(api_tokens.c.id == made["id"])
                           .values(expires_ns=now_ns() - 1))
    assert whoami(client, made["token"]).status_code == 401
    assert new_token(client, reader, "units:read", expires_days=0).status_code == 422


def test_a_disabled_operators_tokens_fail(client: TestClient, app: FastAPI,
                                          reader: OperatorLogin) -> None:
    with app.state.context.engine.begin() as connection:
        connection.execute(update(users).where(users.c.username == "reader")
                           .values(disabled=True))
    assert client.get("/api/v1/whoami", headers=reader.headers).status_code == 401


def test_token_secrets_are_stored_hashed(client: TestClient, app: FastAPI,
                                         admin: OperatorLogin) -> None:
    made = new_token(client, admin, "units:read").json()
    secret = made["token"].split("_", 2)[2]
    row = next(row for row in table_rows(app, "api_tokens") if row["id"] == made["id"])
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in value for value in database_text(app))
    assert not any(admin.token.split("_", 2)[2] in value for value in database_text(app))


def test_listing_tokens(client: TestClient, reader: OperatorLogin,
                        admin: OperatorLogin) -> None:
    made = new_token(client, reader, "units:read").json()
    mine = client.get("/api/v1/tokens", headers=reader.headers).json()["tokens"]
    assert {token["username"] for token in mine} == {"reader"}
    assert made["id"] in {token["id"] for token in mine}
    everyone = client.get("/api/v1/tokens", headers=admin.headers).json()["tokens"]
    assert {token["username"] for token in everyone} == {"reader", "admin"}
    assert all("secret_hash" not in token and "token" not in token for token in everyone)
    assert made["token"] not in client.get("/api/v1/tokens", headers=admin.headers).text


def test_users_are_for_admins(client: TestClient, app: FastAPI, reader: OperatorLogin,
                              admin: OperatorLogin) -> None:
    body = {"username": "carol", "scopes": ["units:read", "credentials:reveal"]}
    assert client.post("/api/v1/users", headers=reader.headers, json=body).status_code == 403
    assert client.get("/api/v1/users", headers=reader.headers).status_code == 403
    created = client.post("/api/v1/users", headers=admin.headers, json=body)
    assert created.status_code == 201, created.text
    password = created.json()["password"]
    assert client.post("/api/v1/users", headers=admin.headers, json=body).status_code == 409
    for bad in ({"username": "Carol", "scopes": ["units:read"]},
                {"username": "dave", "scopes": []},
                {"username": "dave", "scopes": ["root"]},
                {"username": "dave", "scopes": ["units:read"], "password": "mine"}):
        assert client.post("/api/v1/users", headers=admin.headers, json=bad).status_code == 422
    listed = client.get("/api/v1/users", headers=admin.headers).json()["users"]
    assert [(user["username"], user["scopes"], user["disabled"]) for user in listed] == [
        ("admin", ["admin"], False), ("carol", ["credentials:reveal", "units:read"], False),
        ("reader", ["units:read"], False)]
    row = next(row for row in table_rows(app, "users") if row["username"] == "carol")
    assert password not in row["password_hash"]
    assert verify_password(password, row["password_hash"])
    assert not verify_password(password + "x", row["password_hash"])


# --- web sessions ----------------------------------------------------------------------------

def session(app: FastAPI, username: str, *, expires_in_ns: int = 10**12) -> tuple[str, str]:
    """A web session as the UI's login makes one: (cookie value, CSRF token)."""
    cookie, csrf = f"cookie-{username}", f"csrf-{username}"
    user_id = next(row["id"] for row in table_rows(app, "users")
                   if row["username"] == username)
    with app.state.context.engine.begin() as connection:
        connection.execute(sessions.insert().values(
            id_hash=digest(cookie), user_id=user_id, csrf=csrf, created_ns=now_ns(),
            expires_ns=now_ns() + expires_in_ns))
    return cookie, csrf


def cookie_header(cookie: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={cookie}"}


def test_a_session_reads_freely_and_changes_only_with_its_csrf_token(
        client: TestClient, app: FastAPI, admin: OperatorLogin) -> None:
    cookie, csrf = session(app, "admin")
    headers = cookie_header(cookie)
    me = client.get("/api/v1/whoami", headers=headers)
    assert me.status_code == 200
    assert (me.json()["username"], me.json()["token_id"]) == ("admin", None)
    body = {"name": "from the UI", "scopes": ["units:read"]}
    refused = client.post("/api/v1/tokens", json=body, headers=headers)
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert client.post("/api/v1/tokens", json=body,
                       headers=headers | {"X-CSRF-Token": "forged"}).status_code == 403
    made = client.post("/api/v1/tokens", json=body, headers=headers | {"X-CSRF-Token": csrf})
    assert made.status_code == 201, made.text


def test_an_expired_session_or_a_disabled_operator_is_logged_out(
        client: TestClient, app: FastAPI, admin: OperatorLogin) -> None:
    make_operator(app, "erin", Scope.UNITS_READ)
    expired, _ = session(app, "admin", expires_in_ns=-1)
    assert client.get("/api/v1/whoami", headers=cookie_header(expired)).status_code == 401
    live, _ = session(app, "erin")
    assert client.get("/api/v1/whoami", headers=cookie_header(live)).status_code == 200
    with app.state.context.engine.begin() as connection:
        connection.execute(update(users).where(users.c.username == "erin")
                           .values(disabled=True))
    assert client.get("/api/v1/whoami", headers=cookie_header(live)).status_code == 401
    assert client.get("/api/v1/whoami",
                      headers=cookie_header("never-issued")).status_code == 401
