"""Carrying out one erase method on one region, checking every exit code and, where the
device reports it, its state afterwards. A method that fails raises `MethodFailed` with what
went wrong; the caller (`erase.run`) then tries the next one.

- NVMe sanitize: `nvme sanitize --sanact`, then the sanitize log is polled until the
  operation is no longer in progress; only "completed" counts.
- NVMe format: `nvme format --ses=1` (user data erase) or `--ses=2` (crypto erase) on the
  namespace, keeping its LBA format.
- ATA security erase: a temporary user password is set, the (enhanced) erase issued; when it
  fails the password is removed again (`--security-disable`) so the drive is never left
  locked; afterwards IDENTIFY must show security disabled and unlocked.
- ATA sanitize: issued, then `--sanitize-status` polled.
- Discard: `blkdiscard` on the region (a partition is discarded within its own range).
- Overwrite: zeros over the whole region with O_DIRECT writes, flushed (NIST "clear").
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from erase.capabilities import AtaIdentity, Capabilities, Method, ata_identify_path, ata_words
from kiln.errors import KilnError
from kiln.process import CommandError, run
from kiln.sysfs import read_attr

OVERWRITE_CHUNK = 4 << 20
SANITIZE_POLL_SECONDS = 2.0
LONG_COMMAND_SECONDS = 12 * 3600.0  # a security erase of a big spinning disk takes hours
ATA_PASSWORD = "KilnErase"  # noqa: S105 - set only for the erase, removed after it
_SANACT = {Method.NVME_SANITIZE_BLOCK: "2", Method.NVME_SANITIZE_OVERWRITE: "3",
           Method.NVME_SANITIZE_CRYPTO: "4"}
_SES = {Method.NVME_FORMAT_USER_DATA: "1", Method.NVME_FORMAT_CRYPTO: "2"}
_ATA_SANITIZE = {Method.ATA_SANITIZE_CRYPTO: "--sanitize-crypto-scramble",
                 Method.ATA_SANITIZE_BLOCK: "--sanitize-block-erase",
                 Method.ATA_SANITIZE_OVERWRITE: "--sanitize-overwrite"}

Progress = Callable[[int, int], None]  # done bytes, total bytes


class MethodFailed(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class Region:
    """What one method erases: a whole disk, or one partition of the RECOVERY disk."""

    node: Path
    size_bytes: int
    name: str  # "disk", "PRIMARY", "DATA"


def carry_out(method: Method, region: Region, capabilities: Capabilities, *,
              progress: Progress, root: Path = Path("/")) -> str:
    """Erase `region` with `method`; return a one-line account of what was done."""
    try:
        match method:
            case Method.OVERWRITE:
                return overwrite(region, progress=progress)
            case Method.DISCARD:
                run(["blkdiscard", "--force", region.node], timeout=LONG_COMMAND_SECONDS)
                return f"discarded {region.size_bytes} bytes"
            case Method.NVME_FORMAT_USER_DATA | Method.NVME_FORMAT_CRYPTO:
                return _nvme_format(method, region)
            case Method.NVME_SANITIZE_CRYPTO | Method.NVME_SANITIZE_BLOCK \
                    | Method.NVME_SANITIZE_OVERWRITE:
                return _nvme_sanitize(method, capabilities)
            case Method.ATA_SECURITY_ERASE | Method.ATA_SECURITY_ERASE_ENHANCED:
                return _ata_security_erase(method, region, capabilities, root=root)
            case Method.ATA_SANITIZE_CRYPTO | Method.ATA_SANITIZE_BLOCK \
                    | Method.ATA_SANITIZE_OVERWRITE:
                return _ata_sanitize(method, region)
    except CommandError as e:
        raise MethodFailed(f"{method}: {e}") from None
    except OSError as e:
        raise MethodFailed(f"{method}: {region.node}: {e}") from None
    raise MethodFailed(f"{method}: not a method this Kiln can carry out")


def overwrite(region: Region, *, progress: Progress) -> str:
    buffer = mmap.mmap(-1, OVERWRITE_CHUNK)  # zeros, page aligned for O_DIRECT
    fd = os.open(region.node, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    done = 0
    try:
        while done < region.size_bytes:
            size = min(OVERWRITE_CHUNK, region.size_bytes - done)
            view = memoryview(buffer)[:size]
            written = os.pwritev(fd, [view], done)
            view.release()
            if written <= 0:
                raise OSError(f"write at {done} returned {written}")
            done += written
            progress(done, region.size_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    return f"wrote zeros over {done} bytes"


def _nvme_format(method: Method, region: Region) -> str:
    run(["nvme", "format", region.node, f"--ses={_SES[method]}", "--force",
         f"--timeout={int(LONG_COMMAND_SECONDS * 1000)}"], timeout=LONG_COMMAND_SECONDS)
    return f"format with secure erase setting {_SES[method]} completed"


def _sanitize_status(controller: str) -> tuple[int, int]:
    """(sstat's status field, sprog) from the sanitize log."""
    document = json.loads(run(["nvme", "sanitize-log", f"/dev/{controller}",
                               "--output-format=json"], timeout=60).text)
    if isinstance(document, dict) and "sstat" not in document:
        document = next((v for v in document.values() if isinstance(v, dict)), {})
    return int(document.get("sstat", 0)) & 0x7, int(document.get("sprog", 0))


def _nvme_sanitize(method: Method, capabilities: Capabilities) -> str:
    if capabilities.nvme is None:
        raise MethodFailed(f"{method}: not an NVMe device")
    controller = capabilities.nvme.controller
    run(["nvme", "sanitize", f"/dev/{controller}", f"--sanact={_SANACT[method]}"], timeout=120)
    deadline = time.monotonic() + LONG_COMMAND_SECONDS
    while time.monotonic() < deadline:
        status, _progress = _sanitize_status(controller)
        if status in (1, 4):  # completed (4: completed without deallocation)
            return f"sanitize action {_SANACT[method]} completed (sanitize log status {status})"
        if status == 3:
            raise MethodFailed(f"{method}: the controller reports the sanitize failed")
        time.sleep(SANITIZE_POLL_SECONDS)
    raise MethodFailed(f"{method}: still in progress after {LONG_COMMAND_SECONDS:.0f} s")


def _ata_state(region: Region, capabilities: Capabilities, *, root: Path) -> AtaIdentity:
    path = ata_identify_path(capabilities.disk, root=root)
    text = read_attr(path) if path else None
    if text is None:
        raise MethodFailed(f"{region.node}: IDENTIFY data is gone")
    return AtaIdentity.from_words(ata_words(text))


def _ata_security_erase(method: Method, region: Region, capabilities: Capabilities, *,
                        root: Path) -> str:
    erase = "--security-erase-enhanced" if method is Method.ATA_SECURITY_ERASE_ENHANCED \
        else "--security-erase"
    hdparm = ["hdparm", "--user-master", "u"]
    if capabilities.ata is not None and capabilities.ata.security_locked:
        run([*hdparm, "--security-unlock", ATA_PASSWORD, region.node], timeout=60)
    run([*hdparm, "--security-set-pass", ATA_PASSWORD, region.node], timeout=60)
    try:
        run([*hdparm, erase, ATA_PASSWORD, region.node], timeout=LONG_COMMAND_SECONDS)
    except CommandError:
        try:  # never leave the drive locked behind a password
            run([*hdparm, "--security-disable", ATA_PASSWORD, region.node], timeout=60)
        except CommandError as e:
            raise MethodFailed(f"{method} failed and the password could not be removed "
                               f"({e}): the drive may be locked with {ATA_PASSWORD!r}") from None
        raise
    state = _ata_state(region, capabilities, root=root)
    if state.security_enabled or state.security_locked:
        raise MethodFailed(f"{method}: the drive still has security enabled after the erase")
    return f"{erase[2:]} completed; security disabled afterwards"


def _ata_sanitize(method: Method, region: Region) -> str:
    run(["hdparm", "--yes-i-know-what-i-am-doing", _ATA_SANITIZE[method],
         *(["hex:00000000"] if method is Method.ATA_SANITIZE_OVERWRITE else []), region.node],
        timeout=600)
    deadline = time.monotonic() + LONG_COMMAND_SECONDS
    while time.monotonic() < deadline:
        status = run(["hdparm", "--sanitize-status", region.node], timeout=60).text
        if "in progress" not in status.lower():
            if "fail" in status.lower():
                raise MethodFailed(f"{method}: the drive reports: {status.strip()}")
            return f"{method} completed"
        time.sleep(SANITIZE_POLL_SECONDS)
    raise MethodFailed(f"{method}: still in progress after {LONG_COMMAND_SECONDS:.0f} s")
