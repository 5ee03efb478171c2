"""The ramdisk's network: DHCP on every physical NIC until one gets a lease.

Rules:

- Physical NICs are `/sys/class/net` entries with a `device` link (as the inventory counts
  them); loopback is brought up too. Each NIC is tried in name order with busybox `udhcpc`
  (a few DISCOVERs, then the next NIC), round after round, until one has a lease or the
  deadline passes (`NetworkError`, naming every NIC tried and why it failed).
- udhcpc runs a small shell script of ours (written to /run at run time, so the ramdisk
  needs nothing but busybox's `udhcpc` and `ip` applets): it sets the address, the default
  route and writes the lease as `KEY=VALUE` lines; Python reads the lease back and writes
  `/etc/resolv.conf` from it. No daemon stays behind (`udhcpc -q`): a manufacture run is
  far shorter than any lease.
- Every attempt and the final lease are logged to the console.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.process import CommandError, run

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_SECONDS = 120.0
DISCOVER_TRIES = 4  # DISCOVERs per NIC per round, TIMEOUT_SECONDS apart
TIMEOUT_SECONDS = 2

SCRIPT = """#!/bin/sh
# udhcpc's hook (written by Kiln's initramfs.network): $1 is the event, the lease is in env.
lease="$KILN_LEASE_DIR/$interface"
case "$1" in
  deconfig)
    ip link set dev "$interface" up
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/${mask:-24}" dev "$interface"
    for gateway in $router; do
      ip -4 route replace default via "$gateway" dev "$interface"
      break
    done
    {
      echo "ip=$ip"
      echo "mask=${mask:-24}"
      echo "router=$router"
      echo "dns=$dns"
      echo "domain=$domain"
    } > "$lease.tmp"
    mv "$lease.tmp" "$lease"
    ;;
esac
exit 0
"""


class NetworkError(KilnError):
    """No NIC got a DHCP lease before the deadline."""


@dataclass(frozen=True, kw_only=True)
class Lease:
    interface: str
    address: str  # a.b.c.d/prefix
    routers: tuple[str, ...]
    dns: tuple[str, ...]
    domain: str


def physical_nics(sys_class_net: Path = Path("/sys/class/net")) -> tuple[str, ...]:
    if not sys_class_net.is_dir():
        return ()
    return tuple(sorted(entry.name for entry in sys_class_net.iterdir()
                        if (entry / "device").exists()))


def read_lease(path: Path, *, interface: str) -> Lease:
    values = dict(line.partition("=")[::2] for line in path.read_text().splitlines())
    return Lease(interface=interface, address=f"{values.get('ip', '')}/{values.get('mask', '')}",
                 routers=tuple(values.get("router", "").split()),
                 dns=tuple(values.get("dns", "").split()), domain=values.get("domain", ""))


def resolv_conf(lease: Lease) -> str:
    lines = [f"search {lease.domain}"] if lease.domain else []
    lines += [f"nameserver {server}" for server in lease.dns]
    return "".join(f"{line}\n" for line in lines)


def _try_dhcp(interface: str, *, script: Path, work: Path) -> Lease | None:
    lease_file = work / interface
    lease_file.unlink(missing_ok=True)
    run(["ip", "link", "set", "dev", interface, "up"], timeout=30)
    run(["udhcpc", "-i", interface, "-n", "-q", "-f", "-t", str(DISCOVER_TRIES),
         "-T", str(TIMEOUT_SECONDS), "-s", script],
        success_codes=(0, 1),  # 1: no lease (`-n`)
        env={"KILN_LEASE_DIR": str(work)}, timeout=DISCOVER_TRIES * TIMEOUT_SECONDS + 30)
    return read_lease(lease_file, interface=interface) if lease_file.is_file() else None


def bring_up(*, deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
             work: Path = Path("/run/kiln/dhcp"), resolv: Path = Path("/etc/resolv.conf"),
             nics: Sequence[str] | None = None) -> Lease:
    """DHCP on the physical NICs until one has a lease; write resolv.conf; return the lease."""
    work.mkdir(parents=True, exist_ok=True)
    script = work / "udhcpc.script"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    try:
        run(["ip", "link", "set", "dev", "lo", "up"], timeout=30)
    except CommandError as e:
        log.warning("network: cannot bring up lo: %s", e)
    names = tuple(nics) if nics is not None else physical_nics()
    if not names:
        raise NetworkError("network: no physical network interface found "
                           "(is the NIC's driver in the ramdisk?)")
    log.info("network: DHCP on %s (deadline %.0f s)", ", ".join(names), deadline_seconds)
    started = time.monotonic()
    failures: dict[str, str] = {}
    attempt = 0
    while True:
        attempt += 1
        for name in names:
            try:
                lease = _try_dhcp(name, script=script, work=work)
            except CommandError as e:
                lease, failures[name] = None, str(e)
            else:
                failures.setdefault(name, "no DHCP offer")
            if lease is not None:
                resolv.parent.mkdir(parents=True, exist_ok=True)
                resolv.write_text(resolv_conf(lease))
                log.info("network: %s has %s (router %s, DNS %s) after %.1f s", name,
                         lease.address, " ".join(lease.routers) or "none",
                         " ".join(lease.dns) or "none", time.monotonic() - started)
                return lease
            log.warning("network: no DHCP lease on %s yet (round %d)", name, attempt)
            if time.monotonic() - started > deadline_seconds:
                why = "; ".join(f"{nic}: {reason}" for nic, reason in failures.items())
                raise NetworkError(f"network: no DHCP lease on any NIC within "
                                   f"{deadline_seconds:.0f} s ({why})")
