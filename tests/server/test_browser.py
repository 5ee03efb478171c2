"""The web UI in a real browser: a `kiln server` process on SQLite, Debian's Chromium driven
headless by Playwright (whose Python package runs its bundled `node` driver; Chromium is
started by that driver, not by Python).

A supervisor logs in and reads the day's numbers; an operator searches for a unit, opens it,
watches events the test sends arrive in the live log, and reveals the unit's admin password.
Screenshots of the unit page and the dashboard are left in the test's tmp_path.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.server.conftest import example_manufdata
from tests.server.live import LiveServer

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 10_000


@dataclass(frozen=True)
class Line:
    """The factory line's side: reports units and sends their events over HTTP."""

    url: str
    auth: tuple[str, str]

    def report(self, serial: str) -> None:
        answer = requests.post(f"{self.url}/mfg/line1/units", auth=self.auth, timeout=10,
                               json={"serial": serial, "variant": "edge-100",
                                     "dmi": {"sys_vendor": "Supermicro"},
                                     "macs": ["52:54:00:12:34:56"],
                                     "hardware": {"disks": [{"path": "/dev/sda",
                                                             "size_bytes": 64 * 2**30}]}})
        assert answer.status_code == 201, answer.text

    def credentials(self, serial: str) -> str:
        answer = requests.post(f"{self.url}/mfg/line1/credentials", auth=self.auth,
                               json={"serial": serial}, timeout=10)
        assert answer.status_code == 200, answer.text
        password: str = answer.json()["admin_password"]
        return password


@dataclass(frozen=True)
class Run:
    line: Line
    serial: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    numbers: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, *events: tuple[str, str, str, str | None]) -> None:
        """Each event as (type, name, message, result for a finish / level for a log)."""
        batch = []
        for kind, name, message, outcome in events:
            event = {"serial": self.serial, "run_id": self.run_id, "seq": next(self.numbers),
                     "timestamp_ns": time.time_ns(), "type": kind, "name": name,
                     "message": message}
            if kind == "finish":
                event["result"] = outcome
            elif kind == "log":
                event["level"] = outcome
            batch.append(event)
        answer = requests.post(f"{self.line.url}/api/v1/events", auth=self.line.auth,
                               json={"events": batch}, timeout=10)
        assert answer.status_code == 200, answer.text


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer.start(data_dir=tmp_path / "server") as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(server: LiveServer, browser: Browser) -> Iterator[Page]:
    """A tab, closed before the server stops (an open live log would hold its shutdown)."""
    tab = browser.new_page(viewport={"width": 1360, "height": 1000})
    tab.set_default_timeout(WAIT_MS)
    yield tab
    tab.close()


def log_in(page: Page, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def stat(name: str) -> str:
    return f'[data-stat="{name}"] .number'


@pytest.mark.allow_commands("python", "node")
def test_an_operator_follows_a_unit_live_and_reveals_its_password(
        tmp_path: Path, server: LiveServer, page: Page) -> None:
    admin_password, token = server.admin()
    profile = requests.put(f"{server.url}/api/v1/profiles/line1", timeout=10,
                           headers={"Authorization": f"Bearer {token}"},
                           json={"manufdata": example_manufdata()})
    assert profile.status_code == 201, profile.text
    line = Line(server.url, ("line1", profile.json()["line_key"]))
    for serial in ("LIVE-1", "BROKEN-1"):
        line.report(serial)
    broken = Run(line, "BROKEN-1")
    broken.send(("start", "manufacture", "", None),
                ("start", "manufacture/disks", "", None),
                ("finish", "manufacture/disks", "no disk of at least 100 GiB", "fail"),
                ("finish", "manufacture", "", "fail"))
    live = Run(line, "LIVE-1")
    live.send(("start", "manufacture", "", None),
              ("start", "manufacture/hardware", "", None),
              ("finish", "manufacture/hardware", "matched edge-100", "success"))
    handed_out = line.credentials("LIVE-1")

    page.goto(f"{server.url}/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    log_in(page, "admin", admin_password)
    expect(page).to_have_url(f"{server.url}/ui/")
    expect(page.locator(stat("passed"))).to_have_text("0")
    expect(page.locator(stat("failed"))).to_have_text("1")
    expect(page.locator(stat("in-progress"))).to_have_text("1")
    expect(page.locator("#top-failures")).to_contain_text("no disk of at least 100 GiB")

    page.get_by_role("link", name="Units", exact=True).click()
    page.get_by_role("searchbox").fill("live")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#units tbody tr")).to_have_count(1)
    page.get_by_role("link", name="LIVE-1").click()
    expect(page).to_have_url(f"{server.url}/ui/units/LIVE-1")
    expect(page.locator("#live-status")).to_have_text("live")
    rows = page.locator("#timeline tbody tr")
    expect(rows).to_have_count(3)

    live.send(("start", "manufacture/disks", "", None),
              ("log", "manufacture/disks", "wrote the partition table", "info"))
    expect(rows).to_have_count(5)
    expect(rows.nth(4).locator("td.message")).to_have_text("wrote the partition table")
    expect(rows.nth(4).locator("td.stage")).to_have_class(re.compile(r"\bdepth-1\b"))
    live.send(("log", "manufacture/disks", "<img src=x onerror=document.title='owned'>",
               "warning"),
              ("finish", "manufacture/disks", "", "success"),
              ("finish", "manufacture", "", "success"))
    expect(rows).to_have_count(8)
    expect(rows.nth(5).locator("td.message")).to_have_text(
        "<img src=x onerror=document.title='owned'>")
    assert page.locator("#timeline img").count() == 0
    expect(page.locator("#unit-state")).to_have_text("manufacture · succeeded")

    page.get_by_role("button", name="Reveal admin password").click()
    expect(page.locator("#revealed-password")).to_have_text(handed_out)
    page.screenshot(path=tmp_path / "kiln-ui-unit.png", full_page=True)

    page.get_by_role("link", name="Today").click()
    expect(page.locator(stat("passed"))).to_have_text("1")
    expect(page.locator(stat("failed"))).to_have_text("1")
    expect(page.locator(stat("in-progress"))).to_have_text("0")
    page.screenshot(path=tmp_path / "kiln-ui-dashboard.png", full_page=True)


@pytest.mark.allow_commands("python", "node")
def test_an_operator_follows_a_rollout_wave_by_wave_and_pauses_it(
        tmp_path: Path, server: LiveServer, page: Page) -> None:
    """The rollout's page shows each wave's progress as devices report (without a reload),
    and its buttons step the rollout."""
    admin_password, token = server.admin()
    api = f"{server.url}/api/v1/tenants/default"
    headers = {"Authorization": f"Bearer {token}"}
    devices = requests.post(f"{api}/targets", headers=headers, timeout=10, json={
        "targets": [{"controller_id": f"dev-{n}"} for n in range(4)]}).json()["targets"]
    module = requests.post(f"{api}/softwaremodules", headers=headers, timeout=10,
                           json={"name": "fw", "version": "2.0"}).json()["id"]
    requests.put(f"{api}/softwaremodules/{module}/artifacts/fw.swu", data=b"fw", timeout=10,
                 headers={**headers, "Content-Type": "application/octet-stream"})
    made = requests.post(f"{api}/rollouts", headers=headers, timeout=10, json={
        "name": "spring", "module_id": module, "waves": [{"count": 2}, {"percent": 100}],
        "success_percent": 50}).json()
    page.goto(f"{server.url}/ui/rollouts/{made['id']}")
    log_in(page, "admin", admin_password)
    expect(page.locator("#rollout-state")).to_have_text("ready")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#rollout-state")).to_have_text("running")
    first = page.locator('tr[data-wave="1"] [data-field="finished"]')
    expect(first).to_have_text("0")
    device = devices[0]
    controller = f"{server.url}/default/controller/v1/{device['controller_id']}"
    auth = {"Authorization": f"TargetToken {device['target_token']}"}
    href = requests.get(controller, headers=auth, timeout=10).json()["_links"][
        "deploymentBase"]["href"]
    action = href.split("/deploymentBase/")[1].split("?")[0]
    answer = requests.post(f"{controller}/deploymentBase/{action}/feedback", headers=auth,
                           timeout=10, json={"status": {"execution": "closed",
                                                        "result": {"finished": "success"}}})
    assert answer.status_code == 200
    expect(first).to_have_text("1", timeout=WAIT_MS)  # live: no reload
    expect(page.locator('tr[data-wave="2"] [data-field="open"]')).to_have_text("2")
    page.screenshot(path=str(tmp_path / "rollout.png"), full_page=True)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#rollout-state")).to_have_text("paused")
    expect(page.locator("#rollout-reason")).to_have_text("paused by user:admin")
    page.goto(f"{server.url}/ui/rollouts")
    expect(page.locator("#rollouts")).to_contain_text("spring")
    page.goto(f"{server.url}/ui/devices")
    expect(page.locator("#devices")).to_contain_text("dev-3")
