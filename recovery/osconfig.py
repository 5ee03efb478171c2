"""What a restore writes into the freshly extracted OS: the unit's identity and configuration.

Rules:
- hostname from the serial (lower case, `[a-z0-9-]`, at most 63 characters), and a
  `127.0.1.1` line for it in /etc/hosts;
- /etc/machine-id: 32 lower-case hex digits, made once per unit and kept on RECOVERY
  (`state/machine-id`), so a restored unit keeps its identity (DHCP client ids, journals);
- /etc/fstab by file-system UUID: PRIMARY on `/`, RECOVERY on `/recovery`, DATA (if any) on
  `/data` with `nofail`;
- network: the operator's saved systemd-networkd files (`state/network/`) when present, else
  DHCP on every Ethernet interface;
- the admin password: its SHA-512 crypt hash into root's /etc/shadow entry (never the
  password: it never reaches the unit's disk); the device token and the server's endpoints
  under /etc/kiln/ (the token 0600) for the update agent.
Every file is written atomically; the caller syncs before it writes the flag file.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.fsutil import atomic_write_bytes
from recovery.layout import RecoveryLayout, StateFile

HOSTNAME_MAX = 63
NETWORK_DIR = "etc/systemd/network"
DEFAULT_NETWORK_FILE = "80-kiln-dhcp.network"
DEFAULT_NETWORK = "[Match]\nType=ether\n\n[Network]\nDHCP=yes\n"
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")


class OsConfigError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class Mounts:
    """File-system UUIDs for /etc/fstab."""

    primary: str
    recovery: str | None
    data: str | None


def hostname_for(serial: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", serial.lower()).strip("-")[:HOSTNAME_MAX].strip("-")
    return name or "kiln-unit"


def machine_id(layout: RecoveryLayout) -> str:
    """The unit's machine id: the one on RECOVERY, or a new one kept there."""
    path = layout.state_file(StateFile.MACHINE_ID)
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if _MACHINE_ID.match(found):
        return found
    made = uuid.uuid4().hex
    atomic_write_bytes(path, (made + "\n").encode())
    return made


def fstab(mounts: Mounts) -> str:
    lines = ["# written by Kiln's factory restore",
             f"UUID={mounts.primary} / ext4 defaults,noatime 0 1"]
    if mounts.recovery:
        lines.append(f"UUID={mounts.recovery} /recovery ext4 defaults,noatime 0 2")
    if mounts.data:
        lines.append(f"UUID={mounts.data} /data ext4 defaults,noatime,nofail 0 2")
    return "\n".join(lines) + "\n"


def _with_root_hash(shadow: str, password_hash: str) -> str:
    lines = shadow.splitlines()
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) >= 2:
            fields[1] = password_hash
            lines[index] = ":".join(fields)
            return "\n".join(lines) + "\n"
    raise OsConfigError("the image's /etc/shadow has no root entry to take the admin password")


def _network(root: Path, layout: RecoveryLayout) -> str:
    target = root / NETWORK_DIR
    target.mkdir(parents=True, exist_ok=True)
    saved = sorted(path for path in layout.network.glob("*")
                   if path.suffix in (".network", ".netdev", ".link")) \
        if layout.network.is_dir() else []
    if saved:
        for path in saved:
            shutil.copyfile(path, target / path.name)
        return f"the operator's saved configuration ({', '.join(p.name for p in saved)})"
    atomic_write_bytes(target / DEFAULT_NETWORK_FILE, DEFAULT_NETWORK.encode())
    return "DHCP on every Ethernet interface"


def configure(root: Path, *, layout: RecoveryLayout, serial: str, mounts: Mounts) -> list[str]:
    """Write the unit's configuration into the OS at `root`; return what was done."""
    done: list[str] = []
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    hostname = hostname_for(serial)
    atomic_write_bytes(etc / "hostname", f"{hostname}\n".encode())
    hosts = etc / "hosts"
    known = hosts.read_text() if hosts.is_file() else "127.0.0.1 localhost\n"
    kept = "".join(line + "\n" for line in known.splitlines()
                   if not line.startswith("127.0.1.1"))
    atomic_write_bytes(hosts, f"{kept}127.0.1.1 {hostname}\n".encode())
    done.append(f"hostname {hostname}")
    atomic_write_bytes(etc / "machine-id", f"{machine_id(layout)}\n".encode(), mode=0o444)
    atomic_write_bytes(etc / "fstab", fstab(mounts).encode())
    done.append("machine-id, fstab by UUID")
    done.append(_network(root, layout))
    password_hash = layout.state_file(StateFile.ADMIN_HASH)
    if password_hash.is_file():
        shadow = etc / "shadow"
        if not shadow.is_file():
            raise OsConfigError("the image has no /etc/shadow for the admin password")
        status = shadow.stat()
        atomic_write_bytes(shadow, _with_root_hash(shadow.read_text(),
                                                   password_hash.read_text().strip()).encode(),
                           mode=status.st_mode & 0o777)
        os.chown(shadow, status.st_uid, status.st_gid)
        done.append("admin password hash")
    kiln = etc / "kiln"
    kiln.mkdir(exist_ok=True)
    for name, mode in ((StateFile.DEVICE_TOKEN, 0o600), (StateFile.SERVER, 0o644),
                       (StateFile.IDENTITY, 0o644)):
        source = layout.state_file(name)
        if source.is_file():
            atomic_write_bytes(kiln / name.value, source.read_bytes(), mode=mode)
    done.append("/etc/kiln (device token, server, identity)")
    return done
