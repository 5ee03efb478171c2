"""The appliance's side of the Kiln server: fetch manufData, report the unit, take its
credentials, send events.

`mfgurl=` carries the factory line's credentials (`https://PROFILE:LINE_KEY@server/mfg/
PROFILE/manufData.json`); they go with every request to the same server as HTTP Basic, never
into a log line. Trust: the first request verifies the server with `verify` (a CA file the
ramdisk carries, or the system's store); once manufData is read and names a CA (`server.
ca_pem`), every later request verifies against that CA only, so a factory LAN runs with its
own pinned trust.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import requests

from kiln.errors import KilnError
from kiln.events import Event
from kiln.image.http import HttpSource
from kiln.image.source import RetryPolicy
from kiln.manufdata import ManufData, ServerEndpoints, load_manufdata, resolve_url
from kiln.resource import Closing

TIMEOUT = (10, 60)  # connect, read
# Events are small and the server answers them at once; a network that went away must not
# hold the unit up for long: the events stay spooled and go with the next flush.
EVENTS_TIMEOUT = (5, 15)


class ServerError(KilnError):
    """The server refused or could not be reached; the message says which and why."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UnitCredentials:
    admin_password: str = field(repr=False)
    device_token: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class UnitReport:
    serial: str
    variant: str | None
    dmi: Mapping[str, str]
    macs: Sequence[str]
    hardware: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"serial": self.serial, "variant": self.variant, "dmi": dict(self.dmi),
                "macs": list(self.macs), "hardware": dict(self.hardware)}


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`https://user:key@host/p` → (`https://host/p`, (user, key))."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, (unquote(parts.username), unquote(parts.password or ""))


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What a HEAD request says about a file before it is downloaded."""

    url: str
    size_bytes: int | None  # Content-Length, when the server sent one
    sha256: str | None  # a strong ETag that is a sha256 (the Kiln server's), else None


_SHA256_ETAG = re.compile(r'^"([0-9a-f]{64})"$')


class ServerClient(Closing):
    def __init__(self, mfgurl: str, *, verify: bool | str = True,
                 session: requests.Session | None = None):
        self.manufdata_url, self._line = split_credentials(mfgurl)
        self._session = session or requests.Session()
        self._verify: bool | str = verify
        self._pinned_dir: tempfile.TemporaryDirectory[str] | None = None
        self.endpoints: ServerEndpoints | None = None

    @property
    def verify(self) -> bool | str:
        return self._verify

    def _request(self, method: str, url: str, *, what: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("auth", self._line)
        return send(self._session, method, url, what=what, verify=self._verify,
                    trust=self._describe_trust(), **kwargs)

    def _describe_trust(self) -> str:
        if self._pinned_dir is not None:
            return "the CA manufData names"
        return "the system's CAs" if self._verify is True else f"{self._verify}"

    def manufdata(self) -> ManufData:
        """Fetch and validate manufData; pin the CA it names for every later request."""
        response = self._request("GET", self.manufdata_url, what="manufData")
        manufdata = load_manufdata(response.content)
        if manufdata.server is None:
            raise ServerError("manufData names no server endpoints (server.events_url, …)")
        self.endpoints = manufdata.server
        if manufdata.server.ca_pem:
            self._pin(manufdata.server.ca_pem)
        return manufdata

    def _pin(self, pem: str) -> None:
        if self._pinned_dir is None:
            self._pinned_dir = tempfile.TemporaryDirectory(prefix="kiln-ca-")
        path = Path(self._pinned_dir.name) / "server-ca.pem"
        path.write_text(pem)
        self._verify = str(path)

    def _endpoint(self, name: str) -> str:
        if self.endpoints is None:
            raise ServerError("read manufData first: it names the server's endpoints")
        return resolve_url(self.manufdata_url, str(getattr(self.endpoints, name)))

    def url_of(self, relative: str) -> str:
        """A URL from manufData (files, hooks) made absolute; the line's credentials go with
        requests through this client, not in the URL."""
        return split_credentials(resolve_url(self.manufdata_url, relative))[0]

    def source(self, relative: str, *, retry: RetryPolicy | None = None) -> HttpSource:
        """A resumable byte source for a file manufData names, with the line's credentials
        and the pinned trust (its own session: closing it leaves this client open)."""
        session = requests.Session()
        session.auth = self._line
        return HttpSource(self.url_of(relative), session=session, verify=self._verify,
                          retry=retry)

    def probe(self, relative: str) -> Probe:
        """HEAD a file manufData names: is it there, how big, which sha256 (when the server
        says)? Raises `ServerError` when it cannot be reached or is refused."""
        url = self.url_of(relative)
        response = self._request("HEAD", url, what=f"file {relative}", allow_redirects=True)
        length = response.headers.get("Content-Length", "")
        etag = _SHA256_ETAG.match(response.headers.get("ETag", ""))
        return Probe(url=url, size_bytes=int(length) if length.isdigit() else None,
                     sha256=etag.group(1) if etag else None)

    def report_unit(self, report: UnitReport) -> None:
        self._request("POST", self._endpoint("units_url"), what="unit report",
                      json=report.to_json())

    def credentials(self, serial: str) -> UnitCredentials:
        answer = self._request("POST", self._endpoint("credentials_url"), what="credentials",
                               json={"serial": serial}).json()
        return UnitCredentials(answer["admin_password"], answer["device_token"])

    def send_events(self, batch: Sequence[Event]) -> None:
        """A `kiln.events.Sender`: raises unless the server took the batch."""
        self._request("POST", self._endpoint("events_url"), what="events",
                      json={"events": [event.to_json() for event in batch]},
                      timeout=EVENTS_TIMEOUT)

    def close(self) -> None:
        self._session.close()
        if self._pinned_dir is not None:
            self._pinned_dir.cleanup()


def send(session: requests.Session, method: str, url: str, *, what: str, verify: bool | str,
         trust: str, timeout: tuple[float, float] = TIMEOUT,
         **kwargs: Any) -> requests.Response:
    """One request to the Kiln server; `ServerError` names `what` failed and why (no route,
    a certificate that does not verify against `trust`, a refusal with the server's
    detail)."""
    try:
        response = session.request(method, url, verify=verify, timeout=timeout, **kwargs)
    except requests.exceptions.SSLError as e:
        raise ServerError(f"{what}: the server's certificate does not verify against "
                          f"{trust}: {e}") from None
    except requests.RequestException as e:
        raise ServerError(f"{what}: cannot reach {urlsplit(url).netloc}: {e}") from None
    if not response.ok:
        raise ServerError(f"{what}: the server answered {response.status_code}: "
                          f"{_detail(response)}", status=response.status_code)
    return response


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason
    if isinstance(body, dict) and "detail" in body:
        problems = body.get("problems") or []
        return str(body["detail"]) + "".join(f"\n  {problem}" for problem in problems)
    return str(body)[:200]
