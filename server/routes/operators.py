"""Operators and API tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import or_, select, update

from server import audit
from server.accounts import USERNAME, create_token, create_user
from server.auth import Operator, Scope, operator, require
from server.context import context_of, now_ns
from server.db.schema import api_tokens, users
from server.errors import ApiError, not_found

router = APIRouter(prefix="/api/v1", tags=["operators"])
Admin = Annotated[Operator, Depends(require(Scope.ADMIN))]
Anyone = Annotated[Operator, Depends(operator)]


@router.get("/whoami", summary="The operator this request authenticates as")
def whoami(who: Anyone) -> JSONResponse:
    return JSONResponse({"username": who.username, "token_id": who.token_id,
                         "scopes": sorted(scope.value for scope in who.scopes)})


class TokenBody(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=128)
    scopes: list[Scope] = Field(min_length=1)
    expires_days: int | None = Field(default=None, ge=1, le=3650)


@router.post("/tokens", status_code=201, summary="Make an API token with some of your own "
             "scopes (the token is shown once)")
def post_token(request: Request, body: Annotated[TokenBody, Body()],
               who: Anyone) -> JSONResponse:
    missing = [scope.value for scope in body.scopes if not who.has(scope)]
    if missing:
        raise ApiError(403, f"you cannot grant scopes you do not hold: {', '.join(missing)}")
    expires = now_ns() + body.expires_days * 86400 * 10**9 if body.expires_days else None
    with context_of(request).engine.begin() as connection:
        token_id, text = create_token(connection, user_id=who.user_id, name=body.name,
                                      scopes=body.scopes, expires_ns=expires)
        audit.record(connection, actor=who.actor, action="token.create", target=token_id,
                     remote=audit.remote_of(request),
                     details={"scopes": sorted(scope.value for scope in body.scopes)})
    return JSONResponse({"id": token_id, "token": text, "expires_ns": expires},
                        status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/tokens", summary="Your API tokens (an admin sees everyone's)")
def list_tokens(request: Request, who: Anyone) -> JSONResponse:
    query = select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.scopes,
                   api_tokens.c.created_ns, api_tokens.c.expires_ns, api_tokens.c.revoked_ns,
                   users.c.username).join(users, users.c.id == api_tokens.c.user_id)
    if not who.has(Scope.ADMIN):
        query = query.where(api_tokens.c.user_id == who.user_id)
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(query.order_by(api_tokens.c.created_ns)).all()
    return JSONResponse({"tokens": [dict(row._mapping) | {"scopes": row.scopes.split()}
                                    for row in rows]})


@router.delete("/tokens/{token_id}", summary="Revoke an API token")
def revoke_token(request: Request, token_id: Annotated[str, Path(pattern="^[0-9a-f]{16}$")],
                 who: Anyone) -> JSONResponse:
    condition = api_tokens.c.id == token_id
    if not who.has(Scope.ADMIN):
        condition = condition & (api_tokens.c.user_id == who.user_id)
    with context_of(request).engine.begin() as connection:
        changed = connection.execute(update(api_tokens).where(
            condition, or_(api_tokens.c.revoked_ns.is_(None))).values(revoked_ns=now_ns()))
        if not changed.rowcount:
            raise not_found(f"an active token {token_id}")
        audit.record(connection, actor=who.actor, action="token.revoke", target=token_id,
                     remote=audit.remote_of(request))
    return JSONResponse({"id": token_id, "revoked": True})


class UserBody(BaseModel):
    model_config = {"extra": "forbid"}
    username: str = Field(pattern=USERNAME)
    scopes: list[Scope] = Field(min_length=1)


@router.post("/users", status_code=201, summary="Add an operator (admin); answers a one-time "
             "password")
def post_user(request: Request, body: Annotated[UserBody, Body()], who: Admin) -> JSONResponse:
    with context_of(request).engine.begin() as connection:
        user = create_user(connection, username=body.username, scopes=body.scopes)
        audit.record(connection, actor=who.actor, action="user.create", target=body.username,
                     remote=audit.remote_of(request))
    return JSONResponse({"username": user.username, "password": user.password},
                        status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/users", summary="The operators (admin)")
def list_users(request: Request, _who: Admin) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(select(users.c.username, users.c.scopes, users.c.created_ns,
                                         users.c.disabled).order_by(users.c.username)).all()
    return JSONResponse({"users": [dict(row._mapping) | {"scopes": row.scopes.split()}
                                   for row in rows]})
