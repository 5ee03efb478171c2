"""The README's first command, end to end: `kiln lab demo` manufactures a VM over PXE from a
real `kiln server`, restores it and boots its OS (three boots, one VM at a time).

It signs with the session's test key, so its ramdisk is the one the `ramdisk` fixture built:
the demo reuses that build rather than making its own."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from initramfs.builder import RamdiskBuild
from lab.demo import STEPS, DemoOptions, run_demo
from lab.diskimage import ext4_listing
from lab.spec import Firmware
from tests.provision.qemu_factory import QEMU_COMMANDS, partition_table, placed

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands(*QEMU_COMMANDS)]


def test_the_demo_takes_a_unit_through_manufacture_restore_and_a_normal_boot(
        tmp_path: Path, signing_dir: Path, ramdisk: RamdiskBuild) -> None:
    out = io.StringIO()
    scratch = tmp_path / "scratch"
    status = run_demo(DemoOptions(cache=tmp_path / "cache", scratch=scratch,
                                  key=signing_dir / "test.key", firmware=Firmware.BIOS,
                                  serial="KILN-DEMO-TEST", keep=True), out=out)
    text = out.getvalue()
    (tmp_path / "demo.out").write_text(text)  # kept with the test's tmp_path
    assert status == 0, text
    summary = text.split("== Summary", 1)[1]
    for step in STEPS:
        assert re.search(rf"^  {re.escape(step)} +[\d.:]+ (s|min) +ok ", summary, re.MULTILINE), \
            (step, summary)
    assert "reused the ramdisk built earlier from the same inputs" in text
    assert "/ui/units/KILN-DEMO-TEST" in text
    assert "/api/v1/units/KILN-DEMO-TEST/stream" in text
    # Manufacture's progress came from the server's event stream, and its result from the
    # server's record; restore and the OS from the unit's console.
    assert "server: manufacture/partition: partition and format the disk(s)" in text
    assert re.search(r"server record: succeeded in [\d.]+ s by the unit's clock, \d+ events",
                     summary), summary
    assert "unit: kiln: decision: restore" in text
    assert "unit: kiln: decision: normal" in text
    assert "demo OS 1.0.0 as pid 1, host kiln-demo-test" in summary
    for phase in ("manufacture", "restore", "normal"):
        assert (scratch / f"console-{phase}.log").stat().st_size > 0
    assert "Kernel panic" not in (scratch / "console-normal.log").read_text()
    # The demo OS confirmed its boot, as every OS image must (or Kiln gives it up).
    disk = scratch / "unit.img"
    rec = placed(partition_table(disk), 0, "RECOVERY")
    (tmp_path / "check").mkdir()
    state = ext4_listing(disk, rec, "/state", work=tmp_path / "check")
    assert "installed.json" in state and "unconfirmed-boots.json" not in state, state
