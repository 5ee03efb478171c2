"""What a factory line talks to: manufData, the iPXE script, unit reports and credentials.

Every endpoint here takes the profile's line key (HTTP Basic, user = profile name), which the
line's iPXE script and `mfgurl=` carry.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy import select, update

from server import audit
from server.auth import basic_credentials, line_for, new_device_token
from server.context import context_of, now_ns
from server.crypto import EscrowError, digest, new_admin_password, unopenable
from server.db.schema import credentials, profiles, units
from server.ddi import state as ddi_state
from server.ddi.poll import record_changes
from server.errors import ApiError, not_found

router = APIRouter(prefix="/mfg/{profile}", tags=["factory line"])

SERIAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _profile_row(request: Request, profile: str) -> Any:
    with context_of(request).engine.connect() as connection:
        row = connection.execute(select(profiles).where(profiles.c.name == profile)).first()
    if row is None:
        raise not_found(f"profile {profile!r}")
    return row


def served_manufdata(request: Request, row: Any) -> dict[str, Any]:
    """The profile's manufData as units get it: the server's endpoints filled in."""
    context = context_of(request)
    base = context.public_url(request)
    document: dict[str, Any] = json.loads(row.document)
    server: dict[str, Any] = {
        "events_url": f"{base}/api/v1/events",
        "units_url": f"{base}/mfg/{row.name}/units",
        "credentials_url": f"{base}/mfg/{row.name}/credentials",
        "ddi_url": f"{base}/{quote(row.tenant, safe='')}/controller/v1",
    }
    if context.config.ca_cert is not None:
        server["ca_pem"] = context.config.ca_cert.read_text()
    document["server"] = server
    return document


@router.get("/manufData.json", summary="The profile's manufData (the mfgurl= target)")
def get_manufdata(request: Request, profile: str) -> JSONResponse:
    line_for(request, profile)
    row = _profile_row(request, profile)
    return JSONResponse(served_manufdata(request, row),
                        headers={"ETag": f'"{row.name}-{row.revision}"',
                                 "Cache-Control": "no-store"})


@router.get("/boot.ipxe", summary="An iPXE script that boots the Kiln ramdisk for this profile",
            response_class=PlainTextResponse)
def boot_script(request: Request, profile: str) -> PlainTextResponse:
    line_for(request, profile)
    row = _profile_row(request, profile)
    if not row.kernel_file or not row.initrd_file:
        raise ApiError(409, f"profile {profile!r} names no kernel_file/initrd_file to boot")
    base = context_of(request).public_url(request)
    scheme, _, rest = base.partition("://")
    key = _basic_password(request)  # the key this request authenticated with
    authority = f"{scheme}://{profile}:{key}@{rest}"
    mfgurl = f"{authority}/mfg/{profile}/manufData.json"
    args = " ".join(filter(None, [f"initrd={row.initrd_file}", row.kernel_args,
                                  f"mfgurl={mfgurl}"]))
    script = "\n".join([
        "#!ipxe",
        f"echo Kiln: manufacturing with profile {profile}",
        f"kernel {authority}/mfg/{profile}/files/{row.kernel_file} {args}",
        f"initrd --name {row.initrd_file} {authority}/mfg/{profile}/files/{row.initrd_file}",
        "boot",
        "",
    ])
    return PlainTextResponse(script, headers={"Cache-Control": "no-store"})


def _basic_password(request: Request) -> str:
    found = basic_credentials(request)
    assert found is not None  # line_for checked it
    return found[1]


class UnitReport(BaseModel):
    """What a unit says about itself once it has identified its hardware."""

    model_config = {"extra": "forbid"}
    serial: str = Field(pattern=SERIAL_PATTERN)
    variant: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    dmi: dict[str, str] = Field(default_factory=dict, max_length=64)
    macs: list[str] = Field(default_factory=list, max_length=64)
    hardware: dict[str, Any] = Field(default_factory=dict)


@router.post("/units", summary="A unit reports itself (serial, variant, DMI, MACs, disks)")
def report_unit(request: Request, profile: str,
                report: Annotated[UnitReport, Body()]) -> JSONResponse:
    line = line_for(request, profile)
    macs = [mac.lower() for mac in report.macs]
    bad = [mac for mac in macs if not _MAC.match(mac)]
    if bad:
        raise ApiError(422, "malformed MAC address(es)", problems=bad)
    hardware = json.dumps(report.hardware, sort_keys=True)
    if len(hardware) > 256 * 1024:
        raise ApiError(413, "the hardware report is larger than 256 KiB")
    now = now_ns()
    values = {"profile": profile, "variant": report.variant,
              "dmi": json.dumps(report.dmi, sort_keys=True), "macs": " ".join(macs),
              "hardware": hardware, "updated_ns": now}
    with context_of(request).engine.begin() as connection:
        unit_id = connection.execute(select(units.c.id).where(
            units.c.tenant == line.tenant, units.c.serial == report.serial)).scalar()
        if unit_id is None:
            connection.execute(units.insert().values(
                tenant=line.tenant, serial=report.serial, created_ns=now, **values))
            status = 201
        else:
            connection.execute(update(units).where(units.c.id == unit_id).values(**values))
            status = 200
        audit.record(connection, actor=line.actor, action="unit.report", target=report.serial,
                     remote=audit.remote_of(request))
    return JSONResponse({"serial": report.serial, "profile": profile}, status_code=status)


class CredentialRequest(BaseModel):
    model_config = {"extra": "forbid"}
    serial: str = Field(pattern=SERIAL_PATTERN)


@router.post("/credentials",
             summary="The unit's admin password and device token (during manufacture only)")
def hand_out_credentials(request: Request, profile: str,
                         body: Annotated[CredentialRequest, Body()]) -> JSONResponse:
    line = line_for(request, profile)
    context = context_of(request)
    now = now_ns()
    with context.engine.begin() as connection:
        unit = connection.execute(select(units).where(
            units.c.tenant == line.tenant, units.c.serial == body.serial)).first()
        if unit is None or unit.profile != profile:
            raise not_found(f"unit {body.serial!r} on profile {profile!r}")
        if unit.lifecycle != "manufacture" or unit.status != "started":
            raise ApiError(409, "credentials are handed out only while the unit is being "
                                "manufactured (its manufacture run has started and not ended)")
        sealed = connection.execute(select(credentials.c.sealed).where(
            credentials.c.unit_id == unit.id)).scalar()
        context_key = f"{line.tenant}/{unit.serial}"
        if sealed is None:
            password = new_admin_password()
            connection.execute(credentials.insert().values(
                unit_id=unit.id, sealed=context.escrow.seal(password, context=context_key),
                key_id=context.escrow.key_id, created_ns=now, handed_out_ns=now))
        else:
            try:
                password = context.escrow.open(sealed, context=context_key)
            except EscrowError:
                raise unopenable(unit.serial) from None
            connection.execute(update(credentials).where(credentials.c.unit_id == unit.id)
                               .values(handed_out_ns=now))
        token = new_device_token()
        connection.execute(update(units).where(units.c.id == unit.id)
                           .values(device_token_hash=digest(token), updated_ns=now))
        ddi_state.enroll_unit(connection, unit=unit)
        record_changes(connection, tenant=line.tenant, controller_ids=[unit.serial])
        audit.record(connection, actor=line.actor, action="credential.handout",
                     target=unit.serial, remote=audit.remote_of(request))
    context.ddi.polls.forget(line.tenant, unit.serial)  # its token changed
    return JSONResponse({"serial": unit.serial, "admin_password": password,
                         "device_token": token}, headers={"Cache-Control": "no-store"})
