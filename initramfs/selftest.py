"""`kiln.debug=selftest`: prove on a real machine that the ramdisk is complete.

Imports every Python module the contents declare, finds every declared tool, lists the disks
udev found (through pyudev, as the appliance code does), and reports boot timings.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import time

from initramfs.contents import CONTENTS
from kiln.process import SYSTEM_PATH

log = logging.getLogger("kiln.selftest")

_INIT_MARK = "Run /init as init process"


def init_started_at() -> float | None:
    """When the kernel started /init, in seconds since boot, from the kernel log."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                return None
            except OSError:  # EPIPE: a record was overwritten; keep reading
                continue
            prefix, _, message = record.partition(";")
            if message.startswith(_INIT_MARK):
                return int(prefix.split(",")[2]) / 1e6
    finally:
        os.close(fd)


def run_selftest() -> bool:
    ok = True
    started = time.monotonic()
    for name in CONTENTS.python_modules:
        before = time.monotonic()
        try:
            importlib.import_module(name)
        except Exception as e:
            log.error("selftest: import %s failed: %s: %s", name, type(e).__name__, e)
            ok = False
            continue
        log.info("selftest: import %s (%.3f s)", name, time.monotonic() - before)
    log.info("selftest: imported %d modules in %.2f s", len(CONTENTS.python_modules),
             time.monotonic() - started)
    missing = [tool for tool in CONTENTS.tools if not shutil.which(tool, path=SYSTEM_PATH)]
    if missing:
        log.error("selftest: tools missing: %s", ", ".join(missing))
        ok = False
    import pyudev  # noqa: PLC0415 - only the self-test needs it, and only on the appliance

    context = pyudev.Context()
    disks = sorted(
        f"{device.sys_name}:{device.get('ID_BUS', '?')}:{device.attributes.asint('size') * 512}"
        for device in context.list_devices(subsystem="block", DEVTYPE="disk")
        if not device.sys_name.startswith(("loop", "ram"))
    )
    log.info("selftest: disks %s", " ".join(disks) or "(none)")
    log.info("selftest: %s", "PASSED" if ok else "FAILED")
    return ok
