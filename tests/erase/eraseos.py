"""The erase tests' OS and helpers: the test OS that leaves a secret and asks for an erase,
one boot's outcome, a raw search of a disk image, the server's certificates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kiln.image.signing import SigningKey
from lab import Lab
from lab.profile import MIB
from lab.spec import VmSpec
from tests.provision.qemu_factory import Factory
from tests.recovery.testos import INIT_START, BootPair, make_os_image

OS_MARK = "KILN-ERASE-OS:"
_ERASE = """$b mkdir -p /run/recovery/requests
    $b echo '{"reason": "test OS"}' > /run/recovery/requests/erase.json"""
_RESTORE = """$b mkdir -p /run/recovery/requests
    $b echo '{"keep_data": true, "reason": "test OS"}' > /run/recovery/requests/restore.json"""


def erase_os_init(*, restore_first: bool) -> str:
    """The test OS's init, as `kiln request erase --yes` / `kiln request restore` would. On a
    boot with no erase done yet (no certificate on RECOVERY):

    - DATA empty: a secret on DATA and on PRIMARY (printed, so the test knows what to look
      for), then an erase request — or, `restore_first`, a restore request that keeps DATA;
    - the secret on DATA but not on PRIMARY (the restore kept DATA and remade PRIMARY): the
      secret on PRIMARY again, then the erase request."""
    first = _RESTORE if restore_first else _ERASE
    said = ", restore requested" if restore_first else ""
    return INIT_START + f"""secret=$($b cat /run/data/secret.txt 2>/dev/null || $b echo none)
$b echo "{OS_MARK} version $($b cat /etc/version) secret $secret"
if [ -z "$($b ls /run/recovery/certificates 2>/dev/null)" ]; then
  $b mount -o remount,rw /
  if [ "$secret" = none ]; then
    secret="kiln-secret-$($b cat /proc/sys/kernel/random/uuid)"
    $b echo "$secret" > /run/data/secret.txt
    $b echo "$secret" > /secret.txt
    {first}
    $b echo "{OS_MARK} wrote $secret{said}"
  elif [ ! -f /secret.txt ]; then
    $b echo "$secret" > /secret.txt
    {_ERASE}
    $b echo "{OS_MARK} kept $secret, erase requested"
  fi
fi
$b sync
$b umount /run/data /run/recovery
$b mount -o remount,ro /
$b poweroff -f
"""


WROTE = OS_MARK + r" wrote [^\r\n]*"
KEPT = OS_MARK + r" kept [^\r\n]*"
VERSION = OS_MARK + r" version [^\r\n]*"
RESTORED = r"kiln: restore (succeeded|failed): [^\r\n]*"
ERASED = r"kiln: erase (succeeded|failed): [^\r\n]*"


def boot_once(lab: Lab, spec: VmSpec, work: Path, *, name: str, until: str) -> tuple[str, str, str]:
    """Boot once; (the ramdisk's decision, the line `until` matched, the console)."""
    with lab.vm(spec) as vm:
        decision = vm.wait_for(r"kiln: decision: ([a-z]+)", timeout=300)
        found = vm.wait_for(until, timeout=900)
        vm.wait_exit(timeout=300)
        console = vm.console_text()
    (work / f"{name}.txt").write_text(console)
    assert "Kernel panic" not in console and "Traceback" not in console
    return decision.group(1), found.group(0), console


def contains(disk: Path, needle: bytes) -> bool:
    """Whether `needle` is anywhere in a raw disk image (holes skipped)."""
    chunk = 16 * MIB
    fd = os.open(disk, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                return False
            end = os.lseek(fd, offset, os.SEEK_HOLE)
            while offset < end:
                block = os.pread(fd, min(chunk, end - offset) + len(needle), offset)
                if needle in block:
                    return True
                offset = min(offset + chunk, end)  # not past the hole: a short region
    finally:
        os.close(fd)
    return False


def certificates(factory: Factory, serial: str) -> list[dict[str, Any]]:
    found = factory.api(f"units/{serial}/erase-certificates")
    return list(found["certificates"] if isinstance(found, dict) else found)


def erase_os_image(tmp_path: Path, signing_key: SigningKey, version: str, *,
                   boot_files: BootPair | None = None, restore_first: bool = False) -> Path:
    return make_os_image(tmp_path, signing_key, version,
                         init=erase_os_init(restore_first=restore_first),
                         boot_files=boot_files)
