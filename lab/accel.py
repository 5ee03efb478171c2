"""KVM or TCG: which accelerator really runs guests on this host.

`/dev/kvm` existing proves nothing (a nested "PVM" host has one that crawls or aborts, and
QMP's `query-kvm` says enabled anyway), so the answer comes in this order:

1. `KILN_LAB_ACCEL=kvm|tcg` wins;
2. TCG when `/dev/kvm` cannot be opened read/write or `/sys/module/kvm_pvm` exists;
3. otherwise a real KVM boot of SeaBIOS with `-cpu host` and nothing to boot: it must reach
   "no bootable device" and exit within a few seconds, or the answer is TCG.

The probe runs once per process (`functools.cache`).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from kiln.process import CommandError, run
from lab.errors import LabError

log = logging.getLogger(__name__)

ENV_ACCEL = "KILN_LAB_ACCEL"
PROBE_SECONDS = 5.0
_SEABIOS_NO_BOOT = b"No bootable device"


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"

    @property
    def timeout_factor(self) -> float:
        """What the lab's timeouts (written for TCG) are multiplied by."""
        return 0.3 if self is Accel.KVM else 1.0

    @property
    def default_cpu(self) -> str:
        # Under TCG, qemu64 boots Debian's kernel ~10-20 % faster than `max` (whose AVX2
        # paths in glibc and the kernel are emulated); see lab/README.md.
        return "host" if self is Accel.KVM else "qemu64"


def kvm_unusable_reason(
    *, device: Path = Path("/dev/kvm"), modules: Path = Path("/sys/module")
) -> str | None:
    """Why KVM cannot be used without trying a boot, or None if it may work."""
    if (modules / "kvm_pvm").exists():
        return "kvm_pvm is loaded (nested PVM host: KVM guests crawl or abort)"
    try:
        handle = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open {device} read/write ({e.strerror})"
    os.close(handle)
    return None


def kvm_boots(*, qemu: str = "qemu-system-x86_64", seconds: float = PROBE_SECONDS) -> bool:
    """Whether a real KVM guest (SeaBIOS, `-cpu host`) runs to its end within `seconds`."""
    with tempfile.TemporaryDirectory(prefix="kiln-kvm-probe-") as work:
        debug_log = Path(work) / "seabios.log"
        argv = [
            qemu, "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "64",
            "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
            # Nothing to boot: SeaBIOS says so and resets at once; -no-reboot ends QEMU.
            "-boot", "strict=on,reboot-timeout=0",
            "-debugcon", f"file:{debug_log}", "-global", "isa-debugcon.iobase=0x402",
        ]
        try:
            result = run(argv, timeout=seconds)
        except CommandError as e:
            log.info("KVM probe failed, using TCG: %s", e)
            return False
        reached = debug_log.exists() and _SEABIOS_NO_BOOT in debug_log.read_bytes()
        log.info("KVM probe: SeaBIOS %s in %.2f s", "finished" if reached else "did not finish",
                 result.seconds)
        return reached


@functools.cache
def host_accelerator(qemu: str = "qemu-system-x86_64") -> Accel:
    """The probed answer for this host (no override), once per process."""
    reason = kvm_unusable_reason()
    if reason is not None:
        log.info("using TCG: %s", reason)
        return Accel.TCG
    return Accel.KVM if kvm_boots(qemu=qemu) else Accel.TCG


def detect_accelerator(
    *, environ: Mapping[str, str] | None = None, qemu: str = "qemu-system-x86_64"
) -> Accel:
    """The override in `KILN_LAB_ACCEL` if set, else what this host really runs."""
    override = (os.environ if environ is None else environ).get(ENV_ACCEL, "").strip().lower()
    if override:
        try:
            return Accel(override)
        except ValueError:
            raise LabError(
                f"{ENV_ACCEL}={override!r}: expected one of "
                f"{', '.join(a.value for a in Accel)}"
            ) from None
    return host_accelerator(qemu)
