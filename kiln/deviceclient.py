"""A manufactured unit speaking for itself: the server's endpoints and CA from RECOVERY's
`state/server.json`, its device token (`Authorization: Bearer kilndev_…`) from
`state/device-token`. Used after manufacture, when the factory line's key is long gone:
spooled events and erase certificates go to the server with it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from kiln.events import Event
from kiln.manufdata import ServerEndpoints, resolve_url
from kiln.resource import Closing
from kiln.serverclient import EVENTS_TIMEOUT, TIMEOUT, send


class DeviceClient(Closing):
    def __init__(self, endpoints: ServerEndpoints, *, token: str, serial: str, base_url: str,
                 session: requests.Session | None = None):
        """`base_url`: manufData's URL (identity's `profile_url`), which relative endpoints
        are resolved against."""
        self.endpoints = endpoints
        self.base_url = base_url
        self.serial = serial
        self._session = session or requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._ca_dir: tempfile.TemporaryDirectory[str] | None = None
        self._verify: bool | str = True
        if endpoints.ca_pem:
            self._ca_dir = tempfile.TemporaryDirectory(prefix="kiln-ca-")
            path = Path(self._ca_dir.name) / "server-ca.pem"
            path.write_text(endpoints.ca_pem)
            self._verify = str(path)

    def _post(self, url: str, *, what: str, document: Any,
              timeout: tuple[float, float] = TIMEOUT) -> requests.Response:
        trust = "the CA in state/server.json" if self._ca_dir else "the system's CAs"
        return send(self._session, "POST", url, what=what, verify=self._verify, trust=trust,
                    timeout=timeout, json=document)

    def send_events(self, batch: Sequence[Event]) -> None:
        """A `kiln.events.Sender`."""
        self._post(resolve_url(self.base_url, self.endpoints.events_url), what="events",
                   timeout=EVENTS_TIMEOUT,
                   document={"events": [event.to_json() for event in batch]})

    def send_erase_certificate(self, document: dict[str, Any]) -> None:
        # Beside the events endpoint, in the server's API: `…/api/v1/units/S/erase-certificates`.
        events = resolve_url(self.base_url, self.endpoints.events_url)
        url = resolve_url(events, f"units/{quote(self.serial, safe='')}/erase-certificates")
        self._post(url, what="erase certificate", document=document)

    def close(self) -> None:
        self._session.close()
        if self._ca_dir is not None:
            self._ca_dir.cleanup()
