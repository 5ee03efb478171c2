"""The agent's settings: what a restore wrote into the OS's `/etc/kiln/` (the server's
endpoints, the unit's identity, its device token, 0600) and where RECOVERY is mounted."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

from kiln.contract import ContractError, parse
from kiln.errors import KilnError
from kiln.manufdata import ServerEndpoints
from recovery.layout import StateFile

DEFAULT_ETC = Path("/etc/kiln")
DEFAULT_RECOVERY = Path("/recovery")
DEFAULT_TENANT = "default"


class AgentConfigError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    controller_url: str  # {ddi_url}/{serial}
    token: str = field(repr=False)
    serial: str
    variant: str
    recovery: Path
    verify: bool | str = True  # a CA file when the server's CA is pinned
    reboot_argv: tuple[str, ...] = ("reboot",)
    poll_seconds: int | None = None  # None: the server's polling interval
    confirm_boot: bool = True  # the OS is up once the agent runs: confirm the boot
    endpoints: ServerEndpoints | None = None  # for RECOVERY's spooled events
    profile_url: str = ""  # what relative endpoints resolve against


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise AgentConfigError(f"{path} is missing: was this OS restored by Kiln?") from None
    except ValueError as e:
        raise AgentConfigError(f"{path} is not JSON: {e}") from None
    if not isinstance(found, dict):
        raise AgentConfigError(f"{path} is not a JSON object")
    return found


def ddi_root(endpoints: ServerEndpoints) -> str:
    """The tenant's DDI root: `ddi_url`, or (a unit made before the server named it) the
    default tenant's beside the events endpoint."""
    if endpoints.ddi_url:
        return endpoints.ddi_url.rstrip("/")
    return urljoin(endpoints.events_url, f"/{DEFAULT_TENANT}/controller/v1")


def load_config(*, etc: Path = DEFAULT_ETC, recovery: Path = DEFAULT_RECOVERY,
                reboot_argv: tuple[str, ...] = ("reboot",), poll_seconds: int | None = None,
                confirm_boot: bool = True, ca_dir: Path | None = None) -> AgentConfig:
    """Everything from `/etc/kiln/`; a pinned CA is written to `ca_dir` (a fresh temporary
    directory when none is given) for the HTTP client."""
    try:
        endpoints = parse(ServerEndpoints, _read_json(etc / StateFile.SERVER.value),
                          subject=str(etc / StateFile.SERVER.value))
    except ContractError as e:
        raise AgentConfigError(str(e)) from None
    identity = _read_json(etc / StateFile.IDENTITY.value)
    serial = identity.get("serial")
    if not isinstance(serial, str) or not serial:
        raise AgentConfigError(f"{etc / StateFile.IDENTITY.value} names no serial")
    try:
        token = (etc / StateFile.DEVICE_TOKEN.value).read_text().strip()
    except OSError as e:
        raise AgentConfigError(f"the device token cannot be read: {e}") from None
    verify: bool | str = True
    if endpoints.ca_pem:
        directory = ca_dir or Path(tempfile.mkdtemp(prefix="kiln-agent-"))
        (directory / "server-ca.pem").write_text(endpoints.ca_pem)
        verify = str(directory / "server-ca.pem")
    return AgentConfig(controller_url=f"{ddi_root(endpoints)}/{quote(serial, safe='')}",
                       token=token, serial=serial, variant=str(identity.get("variant") or ""),
                       recovery=recovery, verify=verify, reboot_argv=reboot_argv,
                       poll_seconds=poll_seconds, confirm_boot=confirm_boot,
                       endpoints=endpoints, profile_url=str(identity.get("profile_url") or ""))
