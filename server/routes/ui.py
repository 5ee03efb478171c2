"""The web UI under `/ui/`: server-rendered pages for supervisors and operators.

Operators log in with their username and password; the session lives in the `kiln_session`
cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) and anything that changes state carries
the session's CSRF token (the logout form's field, the `X-CSRF-Token` header the unit page's
script sends, taken from the page's `<meta name="csrf-token">`). The login form has its own
short-lived token (a cookie matched by a form field), so another site cannot log a browser in.

Templates are Jinja2 with autoescaping on; the pages load one stylesheet and one script from
`/static/`, and the Content-Security-Policy allows nothing else to run.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import Connection, func, select

from server import audit as audit_log
from server.auth import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    Operator,
    Scope,
    end_session,
    session_operator,
    start_session,
)
from server.context import context_of, now_ns
from server.crypto import verify_password
from server.db.schema import audit, erase_certificates, events, images, profiles, users
from server.ingest import Lifecycle, RunStatus
from server.queries import (
    UnitFilter,
    day_summary,
    event_json,
    find_unit,
    latest_qa_report,
    parse_cursor,
    search_units,
    start_of_today_ns,
    unit_detail,
)

router = APIRouter(prefix="/ui", include_in_schema=False)

TENANT = "default"
PAGE_SIZE = 50
TIMELINE_LIMIT = 2000  # the latest events the unit page renders; the live log adds to them
LOGIN_COOKIE = "kiln_login"
LOGIN_FAILURES_ALLOWED = 10  # per username within the window, then refused for a while
LOGIN_FAILURE_WINDOW_NS = 10 * 60 * 10**9
# Checked when the username is unknown, so a wrong name costs as much time as a wrong password.
_TIMING_HASH = ("scrypt$16384$8$1$hZ6eGSnteeR5OFbjaJuTFg==$vfJTq/6DHBLBx2QtM/DVT172HD2gFcJxY+"
                "amb5vj4a6NQbjQi/4dGTsXPj4nF/SqQ9eCeGvMPJ4L5OAmryXuRA==")
_WRONG_LOGIN = "Wrong username or password."
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def utc(ns: int | None) -> str:
    """A time as UTC ISO 8601, to the second."""
    if ns is None:
        return "—"
    moment = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def clock(ns: int) -> str:
    """The UTC time of day to the millisecond, for event rows."""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def relative(ns: int | None, now: int) -> str:
    if ns is None:
        return ""
    seconds = (now - ns) // 10**9
    ahead = seconds < 0
    seconds = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size or size == 1:
            amount = f"{seconds // size} {unit}"
            return f"in {amount}" if ahead else f"{amount} ago"
    return ""


def human_size(size: Any) -> str:
    if not isinstance(size, int) or isinstance(size, bool):
        return str(size)
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def depth(name: str) -> int:
    """How deep a stage is: "manufacture/disks/partition" is 2. The CSS indents 0-8."""
    return min(name.count("/"), 8)


def pretty(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True)


def unit_path(serial: str) -> str:
    return "/ui/units/" + quote(serial, safe="")


def _environment() -> Environment:
    environment = Environment(loader=FileSystemLoader(Path(__file__).parents[1] / "templates"),
                              autoescape=True, undefined=StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)
    environment.filters.update(utc=utc, clock=clock, relative=relative, size=human_size,
                               depth=depth, pretty=pretty)
    environment.globals.update(unit_path=unit_path, quote=lambda text: quote(text, safe=""))
    return environment


templates = Jinja2Templates(env=_environment())


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this UI only, never another site."""
    if not target or any(ord(char) < 32 or char == "\\" for char in target):
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == "/ui" or
                                            parts.path.startswith("/ui/")):
        return "/ui/"
    return target


def page(request: Request, name: str, *, who: Operator | None, status: int = 200,
         **values: Any) -> Response:
    return templates.TemplateResponse(request, name, {"who": who, "now_ns": now_ns(), **values},
                                      status_code=status, headers=SECURITY_HEADERS)


def message_page(request: Request, who: Operator | None, *, status: int, title: str,
                 message: str) -> Response:
    return page(request, "message.html", who=who, status=status, title=title,
                 message=message)


def gate(request: Request, scope: Scope = Scope.UNITS_READ) -> Operator | Response:
    """The logged-in operator holding `scope`; else the login redirect or a 403 page."""
    who = session_operator(request)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/ui/login?" + urlencode({"next": target}), status_code=303)
    if not who.has(scope):
        return message_page(request, who, status=403, title="Not allowed",
                            message=f"Your account lacks the '{scope.value}' scope this "
                                    "page needs; an administrator can grant it.")
    return who


def _login_form(request: Request, *, next_path: str, status: int = 200,
                error: str | None = None, username: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = page(request, "login.html", who=None, status=status, error=error,
                     next_path=next_path, login_token=token, username=username)
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/ui/login", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.get("/login")
def login_form(request: Request,
               target: Annotated[str, Query(alias="next", max_length=2048)] = "/ui/"
               ) -> Response:
    if session_operator(request) is not None:
        return RedirectResponse(safe_next(target), status_code=303)
    return _login_form(request, next_path=safe_next(target))


def _recent_failures(connection: Connection, username: str) -> int:
    since = now_ns() - LOGIN_FAILURE_WINDOW_NS
    count = connection.execute(select(func.count()).select_from(audit).where(
        audit.c.action == "login.failed", audit.c.target == username,
        audit.c.at_ns >= since)).scalar()
    return int(count or 0)


@router.post("/login")
def login(request: Request, username: Annotated[str, Form(max_length=256)] = "",
          password: Annotated[str, Form(max_length=1024)] = "",
          target: Annotated[str, Form(alias="next", max_length=2048)] = "/ui/",
          login_token: Annotated[str, Form(max_length=128)] = "") -> Response:
    next_path = safe_next(target)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, login_token):
        return _login_form(request, next_path=next_path, status=400, username=username,
                           error="This login form has expired; please log in again.")
    name = username.strip()[:64]
    engine = context_of(request).engine
    with engine.connect() as connection:
        if _recent_failures(connection, name) >= LOGIN_FAILURES_ALLOWED:
            return _login_form(request, next_path=next_path, status=429, username=name,
                               error="Too many failed logins for this account; wait a few "
                                     "minutes and try again.")
        row = connection.execute(select(users.c.id, users.c.password_hash, users.c.disabled)
                                 .where(users.c.username == name)).first()
    good = verify_password(password, row.password_hash if row else _TIMING_HASH)
    remote = audit_log.remote_of(request)
    if row is None or not good or row.disabled:
        with engine.begin() as connection:
            audit_log.record(connection, actor="anonymous", action="login.failed",
                             target=name, remote=remote)
        return _login_form(request, next_path=next_path, status=401, username=name,
                           error=_WRONG_LOGIN)
    session, _csrf = start_session(request, row.id)
    with engine.begin() as connection:
        audit_log.record(connection, actor=f"user:{name}", action="login", target=name,
                         remote=remote)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(SESSION_COOKIE, session, max_age=SESSION_SECONDS, path="/",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    who = session_operator(request)
    if who is None:
        return RedirectResponse("/ui/login", status_code=303)
    if who.csrf is None or not secrets.compare_digest(csrf, who.csrf):
        return message_page(request, who, status=403, title="Not logged out",
                            message="The logout request lacked this session's CSRF token; "
                                    "use the Log out button.")
    end_session(request)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _count(finished: Mapping[str, Mapping[str, int]], kind: str, status: str | None = None
           ) -> int:
    by_status = finished.get(kind, {})
    return by_status.get(status, 0) if status else sum(by_status.values())


@router.get("/")
def dashboard(request: Request) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        summary = day_summary(connection, TENANT, start_of_today_ns())
        failed_units, _ = search_units(connection, UnitFilter(
            tenant=TENANT, status=RunStatus.FAILED.value, limit=10))
    finished = summary["finished"]
    stats = {
        "passed": _count(finished, Lifecycle.MANUFACTURE, RunStatus.SUCCEEDED),
        "failed": _count(finished, Lifecycle.MANUFACTURE, RunStatus.FAILED),
        "in_progress": summary["in_progress"] or 0,
        "restores": _count(finished, Lifecycle.RESTORE),
        "restores_failed": _count(finished, Lifecycle.RESTORE, RunStatus.FAILED),
        "erases": _count(finished, Lifecycle.ERASE),
        "erases_failed": _count(finished, Lifecycle.ERASE, RunStatus.FAILED),
    }
    return page(request, "dashboard.html", who=who, stats=stats, summary=summary,
                 failed_units=failed_units)


def _day_ns(text: str, field: str, problems: list[str], *, end: bool = False) -> int | None:
    """A YYYY-MM-DD date as the nanosecond its UTC day starts (`end`: the next day's)."""
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        problems.append(f"{field}: {text!r} is not a date (YYYY-MM-DD)")
        return None
    moment = dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time(),
                                 dt.UTC)
    return int(moment.timestamp()) * 10**9


def _choice(text: str, field: str, allowed: list[str], problems: list[str]) -> str | None:
    if text and text not in allowed:
        problems.append(f"{field}: {text!r} is not one of {', '.join(allowed)}")
        return None
    return text or None


def unit_filter(query: Mapping[str, str]) -> tuple[UnitFilter | None, list[str]]:
    """The search form's fields as a filter, or every problem with them."""
    problems: list[str] = []
    text = query.get("q", "")
    if len(text) > 128:
        problems.append("search: at most 128 characters")
    for field in ("variant", "profile"):
        if len(query.get(field, "")) > 64:
            problems.append(f"{field}: at most 64 characters")
    lifecycle = _choice(query.get("lifecycle", ""), "lifecycle", [*map(str, Lifecycle)],
                        problems)
    status = _choice(query.get("status", ""), "status", [*map(str, RunStatus)], problems)
    since_ns = _day_ns(query.get("since", ""), "from", problems)
    until_ns = _day_ns(query.get("until", ""), "to", problems, end=True)
    if since_ns is not None and until_ns is not None and until_ns <= since_ns:
        problems.append("the 'to' date is before the 'from' date")
    limit_text = query.get("limit", "") or str(PAGE_SIZE)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 500:
        problems.append(f"limit: {limit_text!r} is not a number from 1 to 500")
    try:
        before = parse_cursor(query.get("cursor") or None)
    except ValueError:
        problems.append("the page link is damaged; start the search again")
        before = None
    if problems:
        return None, problems
    return UnitFilter(tenant=TENANT, text=text.strip(), lifecycle=lifecycle, status=status,
                      variant=query.get("variant", "").strip() or None,
                      profile=query.get("profile", "").strip() or None, since_ns=since_ns,
                      until_ns=until_ns, limit=int(limit_text), before=before), []


@router.get("/units")
def unit_list(request: Request) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    query = {key: value for key, value in request.query_params.items()}
    spec, problems = unit_filter(query)
    found: list[dict[str, Any]] = []
    next_link = None
    with context_of(request).engine.connect() as connection:
        profile_names = list(connection.execute(
            select(profiles.c.name).order_by(profiles.c.name)).scalars())
        if spec is not None:
            found, cursor = search_units(connection, spec)
            if cursor:
                next_link = "/ui/units?" + urlencode(
                    {key: value for key, value in query.items() if value and key != "cursor"}
                    | {"cursor": cursor})
    return page(request, "units.html", who=who, query=query, problems=problems,
                 units=found, next_link=next_link, profile_names=profile_names,
                 lifecycles=[*map(str, Lifecycle)], statuses=[*map(str, RunStatus)],
                 status=400 if problems else 200)


def _latest_events(connection: Connection, unit_id: int) -> tuple[list[dict[str, Any]], int]:
    rows = connection.execute(select(events).where(events.c.unit_id == unit_id)
                              .order_by(events.c.id.desc()).limit(TIMELINE_LIMIT)).all()
    total = connection.execute(select(func.count()).select_from(events)
                               .where(events.c.unit_id == unit_id)).scalar()
    return [event_json(row) for row in reversed(rows)], int(total or 0)


def disks_of(hardware: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The disks in a hardware report, if it lists them as objects: (columns, rows)."""
    disks = hardware.get("disks") if isinstance(hardware, dict) else None
    if not isinstance(disks, list) or not all(isinstance(disk, dict) for disk in disks):
        return [], []
    columns: list[str] = []
    for disk in disks:
        columns += [key for key in disk if key not in columns]
    return columns, disks


def _not_found(request: Request, who: Operator, what: str) -> Response:
    return message_page(request, who, status=404, title="Not found", message=f"{what} not found.")


@router.get("/units/{serial}")
def unit_page(request: Request, serial: str) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        unit = find_unit(connection, TENANT, serial)
        if unit is None:
            return _not_found(request, who, f"Unit {serial!r}")
        detail = unit_detail(connection, unit)
        timeline, total_events = _latest_events(connection, unit.id)
    hardware = detail["hardware"]
    disk_columns, disks = disks_of(hardware)
    other_hardware = ({key: value for key, value in hardware.items() if key != "disks" or
                       not disks} if isinstance(hardware, dict) else hardware)
    certified = {row["run_id"] for row in detail["erase_certificates"]}
    reported = {row["run_id"] for row in detail["qa_reports"]}
    return page(request, "unit.html", who=who, unit=detail, timeline=timeline,
                 total_events=total_events, disks=disks, disk_columns=disk_columns,
                 other_hardware=other_hardware, certified=certified, reported=reported,
                 last_event_id=timeline[-1]["id"] if timeline else 0,
                 can_reveal=who.has(Scope.CREDENTIALS_REVEAL))


@router.get("/units/{serial}/qa")
def qa_page(request: Request, serial: str) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        unit = find_unit(connection, TENANT, serial)
        if unit is None:
            return _not_found(request, who, f"Unit {serial!r}")
        report = latest_qa_report(connection, unit.id)
    if report is None:
        return _not_found(request, who, f"A QA report for unit {serial!r} (it is written "
                                        "when a manufacture succeeds)")
    disk_columns, disks = disks_of(report.get("hardware"))
    return page(request, "qa.html", who=who, serial=serial, report=report, disks=disks,
                 disk_columns=disk_columns)


@router.get("/units/{serial}/erase/{run_id}")
def erase_page(request: Request, serial: str, run_id: str) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        unit = find_unit(connection, TENANT, serial)
        if unit is None:
            return _not_found(request, who, f"Unit {serial!r}")
        row = connection.execute(select(erase_certificates).where(
            erase_certificates.c.unit_id == unit.id,
            erase_certificates.c.run_id == run_id)).first()
    if row is None:
        return _not_found(request, who, f"An erase certificate for run {run_id!r} of unit "
                                        f"{serial!r}")
    document = json.loads(row.document)
    scalars: dict[str, Any] = {}
    tables: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}
    nested: dict[str, Any] = {}
    for key, value in document.items():
        columns, rows = disks_of({"disks": value})
        if rows:
            tables[key] = (columns, rows)
        elif isinstance(value, dict | list):
            nested[key] = value
        else:
            scalars[key] = value
    return page(request, "erase.html", who=who, serial=serial, run_id=run_id,
                 created_ns=row.created_ns, scalars=scalars, tables=tables, nested=nested,
                 profile=unit.profile, variant=unit.variant)


@router.get("/images")
def image_list(request: Request) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(select(images).where(images.c.tenant == TENANT)
                                  .order_by(images.c.created_ns.desc())).all()
    found = [dict(row._mapping) | {"variants": _json_list(row.variants),
                                   "key_ids": _json_list(row.key_ids)} for row in rows]
    return page(request, "images.html", who=who, images=found)


def _json_list(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return [text]
    return value if isinstance(value, list) else [value]


@router.get("/profiles")
def profile_list(request: Request) -> Response:
    who = gate(request)
    if isinstance(who, Response):
        return who
    with context_of(request).engine.connect() as connection:
        rows = connection.execute(select(profiles).where(profiles.c.tenant == TENANT)
                                  .order_by(profiles.c.name)).all()
    base = context_of(request).public_url(request)
    found = [{"name": row.name, "revision": row.revision, "updated_ns": row.updated_ns,
              "kernel_file": row.kernel_file, "initrd_file": row.initrd_file,
              "kernel_args": row.kernel_args, "manufdata": json.loads(row.document),
              "mfg_url": f"{base}/mfg/{quote(row.name)}/manufData.json",
              "ipxe_url": f"{base}/mfg/{quote(row.name)}/boot.ipxe"} for row in rows]
    return page(request, "profiles.html", who=who, profiles=found)
