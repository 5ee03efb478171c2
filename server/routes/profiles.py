"""Operators manage manufData profiles: validated against the model the appliance uses."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select, update

from kiln.contract import ContractError
from kiln.manufdata import load_manufdata, manufdata_schema
from server import audit
from server.auth import Operator, Scope, require
from server.context import context_of, now_ns
from server.crypto import digest, new_secret
from server.db.schema import profiles
from server.errors import ApiError, not_found

router = APIRouter(prefix="/api/v1", tags=["manufData profiles"])
PROFILE_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ProfileName = Annotated[str, Path(pattern=PROFILE_NAME)]
Writer = Annotated[Operator, Depends(require(Scope.MANUFDATA_WRITE))]
Reader = Annotated[Operator, Depends(require(Scope.UNITS_READ))]


class ProfileBody(BaseModel):
    model_config = {"extra": "forbid"}
    manufdata: dict[str, Any] = Field(description="the manufData document (schema 1); the "
                                      "server fills in `server` when it serves it")
    kernel_file: str | None = Field(default=None, pattern=FILE_NAME,
                                    description="boot file the iPXE script loads as kernel")
    initrd_file: str | None = Field(default=None, pattern=FILE_NAME)
    kernel_args: str = Field(default="console=tty0 console=ttyS0,115200", max_length=512,
                             pattern=r"^[^\n\r]*$")


def validate_manufdata(document: dict[str, Any]) -> str:
    """The document as stored; every problem listed (422) when it does not validate."""
    document = {key: value for key, value in document.items() if key != "server"}
    text = json.dumps(document, sort_keys=True)
    try:
        load_manufdata(text)
    except ContractError as e:
        raise ApiError(422, "the manufData does not validate", problems=e.problems) from None
    return text


def profile_json(row: Any) -> dict[str, Any]:
    return {"name": row.name, "manufdata": json.loads(row.document),
            "kernel_file": row.kernel_file, "initrd_file": row.initrd_file,
            "kernel_args": row.kernel_args, "revision": row.revision,
            "created_ns": row.created_ns, "updated_ns": row.updated_ns,
            "mfg_path": f"/mfg/{row.name}/manufData.json",
            "ipxe_path": f"/mfg/{row.name}/boot.ipxe"}


@router.get("/manufdata.schema.json", summary="The JSON Schema of manufData (schema 1)")
def get_schema() -> JSONResponse:
    return JSONResponse(manufdata_schema())


@router.get("/profiles", summary="Every manufData profile")
def list_profiles(request: Request, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(select(profiles).order_by(profiles.c.name)).all()
    return JSONResponse({"profiles": [profile_json(row) for row in rows]})


@router.get("/profiles/{name}", summary="One manufData profile")
def get_profile(request: Request, name: ProfileName, _who: Reader) -> JSONResponse:
    with context_of(request).engine.connect() as connection:
        row = connection.execute(select(profiles).where(profiles.c.name == name)).first()
    if row is None:
        raise not_found(f"profile {name!r}")
    return JSONResponse(profile_json(row))


@router.put("/profiles/{name}", summary="Create or replace a profile (a new one answers 201 "
            "with its line key, shown once)")
def put_profile(request: Request, name: ProfileName, body: Annotated[ProfileBody, Body()],
                who: Writer) -> JSONResponse:
    text = validate_manufdata(body.manufdata)
    now = now_ns()
    values = {"document": text, "kernel_file": body.kernel_file,
              "initrd_file": body.initrd_file, "kernel_args": body.kernel_args,
              "updated_ns": now}
    key = None
    with context_of(request).engine.begin() as connection:
        row = connection.execute(select(profiles.c.revision)
                                 .where(profiles.c.name == name)).first()
        if row is None:
            key = new_secret()
            connection.execute(profiles.insert().values(
                name=name, key_hash=digest(key), created_ns=now, revision=1, **values))
        else:
            connection.execute(update(profiles).where(profiles.c.name == name)
                               .values(revision=row.revision + 1, **values))
        audit.record(connection, actor=who.actor, action="profile.put", target=name,
                     remote=audit.remote_of(request))
        stored = connection.execute(select(profiles).where(profiles.c.name == name)).one()
    document = profile_json(stored)
    if key is not None:
        document["line_key"] = key
    return JSONResponse(document, status_code=201 if key is not None else 200)


@router.post("/profiles/{name}/line-key", summary="Replace the profile's line key (the old "
             "one stops working); answers the new key once")
def rotate_line_key(request: Request, name: ProfileName, who: Writer) -> JSONResponse:
    key = new_secret()
    with context_of(request).engine.begin() as connection:
        changed = connection.execute(update(profiles).where(profiles.c.name == name)
                                     .values(key_hash=digest(key), updated_ns=now_ns()))
        if not changed.rowcount:
            raise not_found(f"profile {name!r}")
        audit.record(connection, actor=who.actor, action="profile.rotate-key", target=name,
                     remote=audit.remote_of(request))
    return JSONResponse({"name": name, "line_key": key}, headers={"Cache-Control": "no-store"})
