"""Fuzz every operation of the server's OpenAPI document with schemathesis, in process
(the ASGI app of the `app` fixture), on both databases.

Each pass authenticates one way: an admin token, the `line1` line key (operations under
`/mfg/` and the units' reports), the admin token on a unit that exists (with a finished
manufacture run, so the unit pages answer 200 with real records instead of 404), and no
credentials at all (positive generation only, SQLite only: almost every answer is 401).
The others send valid and invalid requests (positive and negative generation), 25 of each
per operation. The checks: no 5xx (with the ASGI transport an unhandled exception surfaces
as the exception itself), the content type and body match the response the document
declares for the status, and every refusal of ours is the house error shape
`{"detail": "...", "problems": [...]}` (FastAPI declares only its own validation error for
422, so our 422s are checked against our shape instead), except DDI's 401, which has no body
(hawkBit's contract, shared/ddi-checklist.md).

Not fuzzed: `GET /api/v1/units/{serial}/stream` on the existing unit (server-sent events
never end; it is fuzzed with generated serials, which answer 404 or 401).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.server.conftest import LineLogin, OperatorLogin

EXAMPLES_PER_OPERATION = 25  # in each of positive and negative generation
EXAMPLES_WITHOUT_CREDENTIALS = 10  # positive only
KNOWN_SERIAL = "SN-FUZZ-0001"
KNOWN_RUN = "run-fuzz-0001"
FuzzCase = Case[Any]
DDI_PATHS = "/{tenant}/controller/v1/"
ENDLESS = re.compile(r"/stream$")  # server-sent events: never ends for a unit that exists


class Auth(enum.Enum):
    NONE = "no credentials"
    ADMIN = "admin token"
    LINE = "line key of line1"
    ADMIN_KNOWN_UNIT = "admin token, the existing unit"


@dataclass(frozen=True)
class Finding:
    operation: str
    mode: str
    problem: str
    reproduce: str

    def __str__(self) -> str:
        return f"{self.operation} ({self.mode}): {self.problem}\n    {self.reproduce}"


@dataclass
class Tally:
    """What a pass saw: findings (first per operation and kind) and statuses answered."""

    findings: dict[tuple[str, str, str], Finding] = field(default_factory=dict)
    statuses: dict[str, set[int]] = field(default_factory=dict)
    operations: int = 0

    def add(self, finding: Finding, kind: str) -> None:
        self.findings.setdefault((finding.operation, finding.mode, kind), finding)


def _is_house_error(body: Any) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str):
        return False
    problems = body.get("problems", [])
    return set(body) <= {"detail", "problems"} and isinstance(problems, list) \
        and all(isinstance(problem, str) for problem in problems)


def _is_fastapi_validation_error(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("detail"), list)


def _problem(case: FuzzCase, response: Response) -> tuple[str, str] | None:
    """(kind, description) of what is wrong with this response, or None."""
    status = response.status_code
    if status >= 500:
        return "5xx", f"answered {status}: {response.text[:300]}"
    body: Any = None
    content_type = response.headers.get("content-type", [""])[0]
    if content_type.startswith("application/json") and case.method.upper() != "HEAD":
        try:
            body = response.json()
        except ValueError:
            return "not JSON", f"{status} says JSON but is not: {response.text[:200]}"
    ddi_refusal = status == 401 and not response.content and case.path.startswith(DDI_PATHS)
    if status >= 400 and case.method.upper() != "HEAD" and not ddi_refusal \
            and not (_is_house_error(body) or _is_fastapi_validation_error(body)):
        return "error shape", f"{status} is not {{'detail': …}}: {response.text[:200]}"
    checks = [not_a_server_error, content_type_conformance]
    if not (status == 422 and _is_house_error(body)):
        checks.append(response_schema_conformance)
    try:
        case.validate_response(response, checks=checks)
    except FailureGroup as failures:
        first = failures.exceptions[0]
        return type(first).__name__, f"{status}: {first.title}: {str(first)[:300]}"
    return None


def _events_of_known_unit(case: FuzzCase) -> FuzzCase:
    """Point a generated event batch at the unit that exists, so it gets past the lookup."""
    body = case.body
    batch = body.get("events") if isinstance(body, dict) else None
    for event in batch if isinstance(batch, list) else []:
        if isinstance(event, dict) and "serial" in event:
            event["serial"] = KNOWN_SERIAL
    return case


def _strategies(operation: Any, auth: Auth,
                mode: GenerationMode) -> Iterator[st.SearchStrategy[FuzzCase]]:
    path = operation.path
    if auth is Auth.ADMIN_KNOWN_UNIT:
        if "{serial}" in path and not ENDLESS.search(path):
            yield operation.as_strategy(generation_mode=mode,
                                        path_parameters={"serial": KNOWN_SERIAL})
        return
    if auth is Auth.LINE:
        if path.startswith("/mfg/"):
            yield operation.as_strategy(generation_mode=mode,
                                        path_parameters={"profile": "line1"})
        elif path == "/api/v1/events":
            yield operation.as_strategy(generation_mode=mode).map(_events_of_known_unit)
            yield operation.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE:  # at least one batch that is taken
                yield operation.as_strategy(body={"events": [{
                    "serial": KNOWN_SERIAL, "run_id": "run-fuzz-0002", "seq": 0,
                    "timestamp_ns": 1, "type": "start", "name": "restore"}]})
        elif path.endswith("/erase-certificates") and operation.method == "post":
            yield operation.as_strategy(generation_mode=mode,
                                        path_parameters={"serial": KNOWN_SERIAL})
        return
    yield operation.as_strategy(generation_mode=mode)


def _fuzz_operation(strategy: st.SearchStrategy[FuzzCase], *, label: str, mode: str,
                    examples: int, headers: dict[str, str], tally: Tally) -> None:
    statuses = tally.statuses.setdefault(label, set())

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def send(case: FuzzCase) -> None:
        try:
            response = case.call(headers=headers, timeout=10)
        except Exception as error:  # the ASGI transport re-raises what the app raised
            tally.add(Finding(label, mode, f"raised {type(error).__name__}: {error}",
                              case.as_curl_command()), "exception")
            return
        statuses.add(response.status_code)
        found = _problem(case, response)
        if found is not None:
            kind, problem = found
            tally.add(Finding(label, mode, problem, case.as_curl_command()), kind)

    # Unsatisfiable: negative generation of an operation that takes nothing to get wrong
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        send()


def _headers(auth: Auth, admin: OperatorLogin, line: LineLogin) -> dict[str, str]:
    if auth is Auth.LINE:
        pair = base64.b64encode(f"{line.profile}:{line.key}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    if auth is Auth.NONE:
        return {}
    return admin.headers


@pytest.fixture
def known_unit(client: TestClient, line: LineLogin) -> None:
    """A unit that reported itself and finished a manufacture run (it has a QA report)."""
    answer = client.post("/mfg/line1/units", auth=line.auth, json={
        "serial": KNOWN_SERIAL, "variant": "small", "macs": ["52:54:00:12:34:56"],
        "dmi": {"product_name": "Fuzz"}})
    assert answer.status_code == 201, answer.text
    now = time.time_ns()
    events = [
        {"serial": KNOWN_SERIAL, "run_id": KNOWN_RUN, "seq": 0, "timestamp_ns": now,
         "type": "start", "name": "manufacture", "message": ""},
        {"serial": KNOWN_SERIAL, "run_id": KNOWN_RUN, "seq": 1, "timestamp_ns": now + 1,
         "type": "log", "name": "manufacture", "message": "hello", "level": "info"},
        {"serial": KNOWN_SERIAL, "run_id": KNOWN_RUN, "seq": 2, "timestamp_ns": now + 2,
         "type": "finish", "name": "manufacture", "message": "", "result": "success"},
    ]
    answer = client.post("/api/v1/events", auth=line.auth, json={"events": events})
    assert answer.json() == {"accepted": 3, "duplicates": 0}, answer.text


@pytest.mark.usefixtures("known_unit")
@pytest.mark.parametrize("auth", list(Auth), ids=[auth.name.lower() for auth in Auth])
def test_no_operation_fails_under_fuzzing(app: FastAPI, database_url: str,
                                          admin: OperatorLogin, line: LineLogin,
                                          auth: Auth) -> None:
    examples, modes = EXAMPLES_PER_OPERATION, list(GenerationMode)
    if auth is Auth.NONE:  # every answer is 401 but for the few public operations
        examples, modes = EXAMPLES_WITHOUT_CREDENTIALS, [GenerationMode.POSITIVE]
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    headers = _headers(auth, admin, line)
    tally = Tally()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the OpenAPI document is broken: {result}"
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in modes:
            for strategy in _strategies(operation, auth, mode):
                tally.operations += 1
                _fuzz_operation(strategy, label=label, mode=f"{auth.value}, {mode.value}",
                                examples=examples, headers=headers, tally=tally)
    findings = "\n".join(str(finding) for finding in tally.findings.values())
    assert not tally.findings, f"{len(tally.findings)} finding(s):\n{findings}"
    answered = set().union(*tally.statuses.values())
    # The passes reached the handlers, not only the authentication in front of them.
    if auth is Auth.NONE:
        assert 401 in answered and 200 in answered  # /healthz, the schema: no login needed
    elif auth is Auth.ADMIN:
        assert tally.statuses["GET /api/v1/units"] >= {200, 422}
        assert 404 in tally.statuses["GET /api/v1/units/{serial}"]
    elif auth is Auth.LINE:
        assert 201 in tally.statuses["POST /mfg/{profile}/units"]
        assert 200 in tally.statuses["POST /api/v1/events"]
    else:
        assert 200 in tally.statuses["GET /api/v1/units/{serial}"]
        assert 200 in tally.statuses["GET /api/v1/units/{serial}/qa-report"]
    assert tally.operations >= 4
