"""The web UI through FastAPI's TestClient: logging in and out, CSRF, scopes, and every page
rendering real records (made through the real line and event endpoints) with everything
escaped."""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiln.events import Event, EventType, Level, Result
from server.auth import Scope
from server.context import now_ns
from server.db.schema import audit, images
from server.routes.ui import LOGIN_FAILURES_ALLOWED, safe_next
from tests.server.conftest import LineLogin, OperatorLogin, make_operator

XSS_MESSAGE = '<script>alert("message")</script>'
XSS_DMI = "<img src=x onerror=alert(1)>"


def login(client: TestClient, username: str, password: str,
          next_path: str = "/ui/") -> httpx.Response:
    form = client.get("/ui/login", params={"next": next_path})
    assert form.status_code == 200, form.text
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None
    answer: httpx.Response = client.post(
        "/ui/login", data={"username": username, "password": password, "next": next_path,
                           "login_token": token[1]}, follow_redirects=False)
    return answer


def logged_in(app: FastAPI, who: OperatorLogin) -> TestClient:
    """A browser of its own, logged in as `who`."""
    browser = TestClient(app, base_url="http://kiln.test")
    answer = login(browser, who.username, who.password)
    assert answer.status_code == 303, answer.text
    return browser


def csrf_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found is not None, "the page carries no CSRF token"
    return found[1]


def stat(page: str, name: str) -> int:
    found = re.search(rf'data-stat="{name}"[^>]*>\s*<span class="number">(\d+)</span>', page)
    assert found is not None, f"no {name} number on the dashboard"
    return int(found[1])


@dataclass(frozen=True)
class Run:
    """One run of one unit, sending its events through the line's key."""

    client: TestClient
    line: LineLogin
    serial: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    numbers: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, *events: tuple[str, str, str] | tuple[str, str, str, str]) -> None:
        """Each event as (type, name, message[, result or level])."""
        batch = []
        for kind, name, message, *extra in events:
            event_type = EventType(kind)
            batch.append(Event(
                serial=self.serial, run_id=self.run_id, seq=next(self.numbers),
                timestamp_ns=time.time_ns(), type=event_type, name=name, message=message,
                result=Result(extra[0]) if event_type is EventType.FINISH else None,
                level=Level(extra[0]) if event_type is EventType.LOG else None,
                done=50 if event_type is EventType.PROGRESS else None,
                total=100 if event_type is EventType.PROGRESS else None).to_json())
        answer = self.client.post("/api/v1/events", auth=self.line.auth,
                                  json={"events": batch})
        assert answer.status_code == 200, answer.text


def report_unit(client: TestClient, line: LineLogin, serial: str, *, product: str = "X11",
                disk_model: str = "Samsung PM9A3") -> None:
    answer = client.post("/mfg/line1/units", auth=line.auth, json={
        "serial": serial, "variant": "edge-100",
        "dmi": {"sys_vendor": "Supermicro", "product_name": product},
        "macs": [f"52:54:00:aa:00:{len(serial):02x}"],
        "hardware": {"disks": [{"path": "/dev/nvme0n1", "model": disk_model,
                                "size_bytes": 960197124096}], "memory_bytes": 17179869184}})
    assert answer.status_code == 201, answer.text


@dataclass(frozen=True)
class Records:
    passed: Run
    failed: Run
    password: str  # the passed unit's admin password, as the line got it


@pytest.fixture
def records(client: TestClient, line: LineLogin) -> Records:
    """PASS-1 manufactured (with a QA report and an escrowed password), FAIL-1 failed at
    partitioning, and XSS-1 (hostile text in its DMI and events) still in progress."""
    for serial in ("PASS-1", "FAIL-1"):
        report_unit(client, line, serial)
    report_unit(client, line, "XSS-1", product=XSS_DMI, disk_model="<b>bold</b>")
    passed = Run(client, line, "PASS-1")
    passed.send(("start", "manufacture", ""), ("start", "manufacture/hardware", ""),
                ("finish", "manufacture/hardware", "matched edge-100", "success"))
    answer = client.post("/mfg/line1/credentials", auth=line.auth, json={"serial": "PASS-1"})
    assert answer.status_code == 200, answer.text
    passed.send(("start", "manufacture/disks", ""),
                ("start", "manufacture/disks/partition", ""),
                ("log", "manufacture/disks/partition", "wrote a GPT", "info"),
                ("finish", "manufacture/disks/partition", "", "success"),
                ("progress", "manufacture/disks", "copying the image"),
                ("finish", "manufacture/disks", "disk slower than expected", "warn"),
                ("finish", "manufacture", "", "success"))
    failed = Run(client, line, "FAIL-1")
    failed.send(("start", "manufacture", ""), ("start", "manufacture/disks", ""),
                ("start", "manufacture/disks/partition", ""),
                ("finish", "manufacture/disks/partition", "sgdisk: /dev/sda: no such device",
                 "fail"),
                ("finish", "manufacture/disks", "", "fail"),
                ("finish", "manufacture", "stopped", "fail"))
    hostile = Run(client, line, "XSS-1")
    hostile.send(("start", "manufacture", ""),
                 ("log", f"manufacture/{XSS_MESSAGE}", XSS_MESSAGE, "warning"))
    return Records(passed, failed, answer.json()["admin_password"])


def test_login_sets_a_strict_session_cookie_and_goes_to_next(client: TestClient,
                                                             admin: OperatorLogin) -> None:
    answer = login(client, admin.username, admin.password, "/ui/units?q=SN")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/units?q=SN"
    cookie = next(value for value in answer.headers.get_list("set-cookie")
                  if value.startswith("kiln_session="))
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
    page = client.get("/ui/units?q=SN")
    assert page.status_code == 200
    assert '<span class="username"' in page.text and admin.username in page.text


def test_login_over_https_marks_the_cookie_secure(app: FastAPI, admin: OperatorLogin) -> None:
    browser = TestClient(app, base_url="https://kiln.test")
    answer = login(browser, admin.username, admin.password)
    assert answer.status_code == 303
    cookie = next(value for value in answer.headers.get_list("set-cookie")
                  if value.startswith("kiln_session="))
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(
        client: TestClient, app: FastAPI, admin: OperatorLogin) -> None:
    answers = [login(client, admin.username, "not-the-password"),
               login(client, "nobody", admin.password)]
    for answer in answers:
        assert answer.status_code == 401
        assert "Wrong username or password." in answer.text
        assert 'name="password"' in answer.text  # the form again
        assert not any(value.startswith("kiln_session=")
                       for value in answer.headers.get_list("set-cookie"))
    assert client.get("/ui/", follow_redirects=False).status_code == 303
    with app.state.context.engine.connect() as connection:
        failed = [row.target for row in connection.execute(
            audit.select().where(audit.c.action == "login.failed").order_by(audit.c.id))]
    assert failed == [admin.username, "nobody"]


def test_repeated_failures_lock_the_account_for_a_while(client: TestClient,
                                                        admin: OperatorLogin) -> None:
    for _ in range(LOGIN_FAILURES_ALLOWED):
        assert login(client, admin.username, "guess").status_code == 401
    answer = login(client, admin.username, admin.password)
    assert answer.status_code == 429
    assert "Too many failed logins" in answer.text


def test_a_login_without_the_forms_token_is_refused(client: TestClient,
                                                    admin: OperatorLogin) -> None:
    answer = client.post("/ui/login", data={"username": admin.username,
                                            "password": admin.password},
                         follow_redirects=False)
    assert answer.status_code == 400
    assert "expired" in answer.text
    assert client.get("/ui/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("path", ["/ui/", "/ui/units?q=a&status=failed", "/ui/units/SN1",
                                  "/ui/units/SN1/qa", "/ui/images", "/ui/profiles"])
def test_pages_send_strangers_to_the_login_with_next(client: TestClient, path: str) -> None:
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=" + quote(path, safe="")


@pytest.mark.parametrize(("target", "expected"), [
    ("/ui/units?q=a", "/ui/units?q=a"), ("/ui", "/ui"), ("/ui/units/SN1/qa", "/ui/units/SN1/qa"),
    ("https://evil.example/ui/", "/ui/"), ("//evil.example/ui/", "/ui/"),
    ("/\\evil.example", "/ui/"), ("javascript:alert(1)", "/ui/"), ("/api/v1/units", "/ui/"),
    ("/ui/\t//evil.example", "/ui/"), ("", "/ui/"), ("http:/ui/", "/ui/")])
def test_safe_next_keeps_only_paths_of_the_ui(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def test_the_login_refuses_to_redirect_off_the_site(client: TestClient,
                                                    admin: OperatorLogin) -> None:
    form = client.get("/ui/login", params={"next": "//evil.example/"})
    assert 'name="next" value="/ui/"' in form.text
    answer = login(client, admin.username, admin.password, "https://evil.example/")
    assert answer.headers["location"] == "/ui/"
    again = client.get("/ui/login", params={"next": "//evil.example/"}, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/ui/"


def test_logout_needs_the_sessions_csrf_token(app: FastAPI, client: TestClient,
                                              admin: OperatorLogin) -> None:
    login(client, admin.username, admin.password)
    session = client.cookies["kiln_session"]
    page = client.get("/ui/")
    refused = client.post("/ui/logout", data={"csrf": "forged"}, follow_redirects=False)
    assert refused.status_code == 403
    assert client.get("/ui/").status_code == 200
    answer = client.post("/ui/logout", data={"csrf": csrf_of(page.text)},
                         follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    stale = TestClient(app, base_url="http://kiln.test", cookies={"kiln_session": session})
    assert stale.get("/ui/", follow_redirects=False).status_code == 303


def test_a_user_without_units_read_gets_a_403_page(app: FastAPI) -> None:
    browser = logged_in(app, make_operator(app, "revealer", Scope.CREDENTIALS_REVEAL))
    for path in ("/ui/", "/ui/units", "/ui/units/SN1", "/ui/profiles"):
        answer = browser.get(path)
        assert answer.status_code == 403
        assert "units:read" in answer.text and "revealer" in answer.text


def test_the_dashboard_shows_todays_passes_failures_and_why(
        app: FastAPI, admin: OperatorLogin, records: Records) -> None:
    page = logged_in(app, admin).get("/ui/")
    assert page.status_code == 200
    assert (stat(page.text, "passed"), stat(page.text, "failed")) == (1, 1)
    assert stat(page.text, "in-progress") == 1  # XSS-1
    assert (stat(page.text, "restores"), stat(page.text, "erases")) == (0, 0)
    failures = page.text[page.text.index('id="top-failures"'):]
    assert re.search(r'manufacture/disks/partition</td><td class="num">1</td>', failures)
    assert "sgdisk: /dev/sda: no such device" in failures
    failed_units = page.text[page.text.index('id="failed-units"'):]
    assert 'href="/ui/units/FAIL-1"' in failed_units
    assert "PASS-1" not in failed_units


def serials(page: str) -> list[str]:
    return re.findall(r'class="serial" href="/ui/units/[^"]+">([^<]+)</a>', page)


def test_the_unit_search_finds_by_serial_mac_and_filters(
        app: FastAPI, admin: OperatorLogin, records: Records) -> None:
    browser = logged_in(app, admin)
    assert serials(browser.get("/ui/units", params={"q": "pass"}).text) == ["PASS-1"]
    by_mac = browser.get("/ui/units", params={"q": "aa:00:06"}).text  # len("PASS-1") == 6
    assert sorted(serials(by_mac)) == ["FAIL-1", "PASS-1"]
    failed = browser.get("/ui/units", params={"status": "failed", "lifecycle": "manufacture"})
    assert serials(failed.text) == ["FAIL-1"]
    assert "sgdisk: /dev/sda: no such device" in failed.text
    today = time.strftime("%Y-%m-%d", time.gmtime())
    everything = browser.get("/ui/units", params={"since": today, "until": today,
                                                  "profile": "line1", "variant": "edge-100"})
    assert sorted(serials(everything.text)) == ["FAIL-1", "PASS-1", "XSS-1"]
    empty = browser.get("/ui/units", params={"until": "2000-01-01"})
    assert serials(empty.text) == [] and "No unit matches." in empty.text


def test_the_unit_search_pages_with_a_next_link(app: FastAPI, admin: OperatorLogin,
                                                records: Records) -> None:
    browser = logged_in(app, admin)
    seen: list[str] = []
    link: str | None = "/ui/units?limit=1"
    while link is not None:
        page = browser.get(link)
        assert page.status_code == 200
        seen += serials(page.text)
        found = re.search(r'rel="next" href="([^"]+)"', page.text)
        link = found[1].replace("&amp;", "&") if found else None
    assert sorted(seen) == ["FAIL-1", "PASS-1", "XSS-1"]


@pytest.mark.parametrize(("params", "problem"), [
    ({"status": "exploded"}, "status: &#39;exploded&#39; is not one of"),
    ({"lifecycle": "melt"}, "lifecycle: &#39;melt&#39; is not one of"),
    ({"since": "yesterday"}, "from: &#39;yesterday&#39; is not a date"),
    ({"since": "2024-02-10", "until": "2024-02-01"}, "before the &#39;from&#39; date"),
    ({"cursor": "not-a-cursor"}, "the page link is damaged"),
    ({"limit": "0"}, "limit: &#39;0&#39; is not a number from 1 to 500"),
    ({"q": "x" * 200}, "search: at most 128 characters")])
def test_bad_search_values_get_a_clear_message(client: TestClient, admin: OperatorLogin,
                                               params: dict[str, str], problem: str) -> None:
    login(client, admin.username, admin.password)
    answer = client.get("/ui/units", params=params)
    assert answer.status_code == 400
    assert problem in answer.text
    assert 'id="units"' not in answer.text


def test_the_unit_page_shows_identity_runs_events_and_records(
        app: FastAPI, admin: OperatorLogin, records: Records) -> None:
    page = logged_in(app, admin).get("/ui/units/PASS-1")
    assert page.status_code == 200
    text = page.text
    for expected in ("Supermicro", "edge-100", "line1", "52:54:00:aa:00:06", "Samsung PM9A3",
                     "894.3 GiB", records.passed.run_id, "disk slower than expected",
                     "manufacture · succeeded"):
        assert expected in text, expected
    assert '<td class="stage depth-0">manufacture</td>' in text
    assert '<td class="stage depth-2">manufacture/disks/partition</td>' in text
    assert text.count('class="event type-') == 10
    last_id = re.search(r'data-last-id="(\d+)"', text)
    assert last_id is not None and int(last_id[1]) > 0
    assert 'data-stream-url="/api/v1/units/PASS-1/stream"' in text
    assert 'href="/ui/units/PASS-1/qa"' in text
    assert 'id="reveal"' in text and csrf_of(text)


def test_the_reveal_button_is_hidden_without_the_scope(app: FastAPI, reader: OperatorLogin,
                                                       records: Records) -> None:
    page = logged_in(app, reader).get("/ui/units/PASS-1")
    assert page.status_code == 200
    assert 'id="reveal"' not in page.text
    assert "needs the 'credentials:reveal' scope" in page.text


def test_the_pages_csrf_token_lets_the_session_reveal(app: FastAPI, admin: OperatorLogin,
                                                      records: Records) -> None:
    browser = logged_in(app, admin)
    token = csrf_of(browser.get("/ui/units/PASS-1").text)
    url = "/api/v1/units/PASS-1/credentials/reveal"
    assert browser.post(url).status_code == 403
    assert browser.post(url, headers={"X-CSRF-Token": "forged"}).status_code == 403
    answer = browser.post(url, headers={"X-CSRF-Token": token})
    assert answer.status_code == 200
    assert answer.json()["admin_password"] == records.password


def test_an_unknown_unit_is_a_404_page(app: FastAPI, admin: OperatorLogin) -> None:
    browser = logged_in(app, admin)
    for path in ("/ui/units/NOPE", "/ui/units/NOPE/qa", "/ui/units/NOPE/erase/run"):
        answer = browser.get(path)
        assert answer.status_code == 404
        assert "NOPE" in answer.text and "not found" in answer.text


def test_the_qa_report_is_printable(app: FastAPI, admin: OperatorLogin,
                                    records: Records) -> None:
    browser = logged_in(app, admin)
    page = browser.get("/ui/units/PASS-1/qa")
    assert page.status_code == 200
    report = page.text[page.text.index('id="qa-report"'):]
    for expected in ("Quality assurance report", "PASS", records.passed.run_id,
                     "manufacture/disks/partition", "disk slower than expected",
                     "Samsung PM9A3", "Supermicro"):
        assert expected in report, expected
    assert '<td class="stage depth-1">manufacture/hardware</td>' in report
    assert "@media print" in browser.get("/static/kiln.css").text
    missing = browser.get("/ui/units/FAIL-1/qa")
    assert missing.status_code == 404 and "QA report" in missing.text


def test_the_erase_certificate_is_printable(client: TestClient, app: FastAPI,
                                            admin: OperatorLogin, line: LineLogin,
                                            records: Records) -> None:
    certificate = {"run_id": "erase-run-1", "method": "nvme-format-crypto",
                   "verified": True, "finished_ns": 1_700_000_000 * 10**9,
                   "disks": [{"path": "/dev/nvme0n1", "model": "Samsung PM9A3",
                              "size_bytes": 960197124096, "result": "erased"}]}
    stored = client.post("/api/v1/units/PASS-1/erase-certificates", auth=line.auth,
                         json=certificate)
    assert stored.status_code == 201, stored.text
    browser = logged_in(app, admin)
    assert 'href="/ui/units/PASS-1/erase/erase-run-1"' in browser.get("/ui/units/PASS-1").text
    page = browser.get("/ui/units/PASS-1/erase/erase-run-1")
    assert page.status_code == 200
    for expected in ("Data erase certificate", "nvme-format-crypto", "2023-11-14T22:13:20Z",
                     "/dev/nvme0n1", "894.3 GiB", "erased"):
        assert expected in page.text, expected
    assert browser.get("/ui/units/PASS-1/erase/other-run").status_code == 404


def test_the_images_and_profiles_pages(app: FastAPI, admin: OperatorLogin,
                                       line: LineLogin) -> None:
    with app.state.context.engine.begin() as connection:
        connection.execute(images.insert().values(
            id="a" * 64, tenant="default", sha256="b" * 64, size=734003200,
            product="acme-edge", version="2.3.0", build=41,
            variants=json.dumps(["edge-100", "edge-200"]), payload="rootfs-tar",
            key_ids=json.dumps(["k3y1d"]), created_ns=now_ns(), uploaded_by="admin"))
    browser = logged_in(app, admin)
    page = browser.get("/ui/images")
    assert page.status_code == 200
    row = page.text[page.text.index('id="images"'):]
    for expected in ("acme-edge", "2.3.0", ">41<", "edge-100, edge-200", "700.0 MiB",
                     "k3y1d", "rootfs-tar"):
        assert expected in row, expected
    profiles = browser.get("/ui/profiles")
    assert profiles.status_code == 200
    for expected in ("line1", "http://kiln.test/mfg/line1/manufData.json",
                     "http://kiln.test/mfg/line1/boot.ipxe", "vmlinuz", "initrd.zst",
                     "&#34;product&#34;: &#34;acme-edge&#34;"):
        assert expected in profiles.text, expected
    assert line.key not in profiles.text


def test_hostile_text_is_escaped_everywhere(app: FastAPI, admin: OperatorLogin,
                                            records: Records) -> None:
    browser = logged_in(app, admin)
    for path in ("/ui/", "/ui/units", "/ui/units?q=XSS", "/ui/units/XSS-1"):
        page = browser.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page
    unit = browser.get("/ui/units/XSS-1").text
    assert "&lt;script&gt;alert(&#34;message&#34;)&lt;/script&gt;" in unit
    assert "&lt;img src=x onerror=alert(1)&gt;" in unit
    assert "&lt;b&gt;bold&lt;/b&gt;" in unit
    search = browser.get("/ui/units", params={"q": XSS_MESSAGE}).text
    assert "<script>alert" not in search and "&lt;script&gt;" in search


def test_pages_carry_a_strict_content_security_policy(client: TestClient,
                                                      admin: OperatorLogin) -> None:
    login(client, admin.username, admin.password)
    for path in ("/ui/login", "/ui/"):
        answer = client.get(path)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert answer.headers["cache-control"] == "no-store"
    assert "unsafe-inline" not in client.get("/ui/").headers["content-security-policy"]
