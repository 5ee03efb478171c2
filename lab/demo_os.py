"""The demo's operating system: a busybox root whose /sbin/init prints one marker line with
what the factory restore gave it (the image's version, the hostname, the machine-id) and
powers off. Small enough to build, sign and restore in seconds; real enough that restore
configures it as it would any OS (it has /etc/shadow with a root entry for the admin
password's hash)."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.image.builder import ImageSpec, build_image
from kiln.image.signing import SigningKey

DEMO_OS_MARK = "KILN-DEMO-OS:"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: the demo OS has no C library
VERSION_FILE = "etc/kiln-demo-version"
_DYNAMIC_HINT = b"ld-linux"  # a dynamic ELF names its interpreter near the start
# What the restore writes (hostname, machine-id) is read back as it landed on PRIMARY.
DEMO_OS_INIT = f"""#!/bin/busybox sh
b=/bin/busybox
$b mount -t proc proc /proc
$b mount -t tmpfs tmpfs /run
$b mkdir -p /run/recovery
# Confirm the boot (what `kiln boot-done` does), or Kiln counts it as one that failed.
if $b mount "$($b findfs LABEL=RECOVERY)" /run/recovery; then
    $b rm -f /run/recovery/state/unconfirmed-boots.json
    $b umount /run/recovery
fi
$b echo
$b echo "Kiln demo OS $($b cat /{VERSION_FILE}) is up as pid $$ on $($b cat /etc/hostname)"
$b echo "{DEMO_OS_MARK} version $($b cat /{VERSION_FILE}) host $($b cat /etc/hostname) \\
machine-id $($b cat /etc/machine-id) pid $$"
$b sync
$b poweroff -f
"""
_MARK_LINE = re.compile(re.escape(DEMO_OS_MARK) + r" version (\S+) host (\S+) machine-id (\S+)"
                        r" pid (\d+)")


class DemoOsError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class OsReport:
    """What the demo OS said about itself on the console."""

    version: str
    hostname: str
    machine_id: str
    pid: int


def parse_os_line(text: str) -> OsReport | None:
    """The demo OS's marker line in console text, if it is there."""
    match = _MARK_LINE.search(text)
    if match is None:
        return None
    return OsReport(version=match.group(1), hostname=match.group(2),
                    machine_id=match.group(3), pid=int(match.group(4)))


def make_demo_root(root: Path, *, version: str, busybox: Path = BUSYBOX) -> Path:
    """The demo OS's tree in `root` (created)."""
    if not busybox.is_file():
        raise DemoOsError(f"{busybox} is missing: install busybox-static (tools/setup does)")
    with busybox.open("rb") as handle:
        if _DYNAMIC_HINT in handle.read(4096):
            raise DemoOsError(f"{busybox} is linked dynamically; the demo OS needs "
                              "busybox-static")
    for directory in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    init = root / "sbin" / "init"
    init.write_text(DEMO_OS_INIT)
    init.chmod(0o755)
    (root / VERSION_FILE).write_text(f"{version}\n")
    (root / "etc" / "os-release").write_text(
        f'NAME="Kiln demo OS"\nID=kiln-demo\nVERSION_ID="{version}"\n')
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc" / "shadow").chmod(0o640)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


def build_demo_image(work: Path, *, key: SigningKey, product: str, version: str,
                     variant: str) -> Path:
    """The demo OS as a signed `.upd` in `work`."""
    root = make_demo_root(work / f"demo-os-{version}", version=version)
    out = work / f"{product}-{version}.upd"
    build_image(root, out, spec=ImageSpec(product=product, version=version, build=1,
                                          variants=(variant,)), keys=[key])
    return out
