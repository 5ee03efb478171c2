"""Kiln's NVRAM entries: the load-option format, and `ensure_uefi_entries` against a fake
efivarfs directory and a fake `efibootmgr` (a script that edits that directory the way the
real one edits efivarfs), so idempotency is checked call by call."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from recovery.uefi_entries import (
    EFI_GLOBAL_VARIABLE,
    EspLocation,
    encode_load_option,
    ensure_uefi_entries,
    esp_device_path,
    parse_load_option,
    read_boot_entries,
    read_boot_order,
    wanted_entries,
)

ESP_UUID = "5a4c1f2e-0b7d-4c3a-9e21-6f0d8b7a1c55"
OTHER_UUID = "11111111-2222-4333-8444-555555555555"
ESP = EspLocation(number=1, partition_uuid=ESP_UUID, start=2048, sectors=131072)
CONSOLE = "console=tty0 console=ttyS0,115200"
ROOT = Path(__file__).resolve().parents[2]

FAKE = """#!{python}
import argparse, json, struct, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from recovery.uefi_entries import EFI_GLOBAL_VARIABLE as G, encode_load_option, esp_device_path
config = json.loads((Path(__file__).parent / "fake.json").read_text())
efivars = Path(config["efivars"])
with open(config["log"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
p = argparse.ArgumentParser()
for flag in ("-q", "-C", "-B", "-u"):
    p.add_argument(flag, action="store_true")
for flag in ("-d", "-p", "-L", "-l", "-b", "-o"):
    p.add_argument(flag)
p.add_argument("rest", nargs="*")
long = {{"--quiet": "-q", "--create-only": "-C", "--delete-bootnum": "-B", "--unicode": "-u",
         "--disk": "-d", "--part": "-p", "--label": "-L", "--loader": "-l", "--bootnum": "-b",
         "--bootorder": "-o"}}
a = p.parse_args([long.get(x, x) for x in sys.argv[1:]])
attrs = struct.pack("<I", 7)
if a.C:
    used = {{int(f.name[4:8], 16) for f in efivars.glob("Boot[0-9A-F][0-9A-F][0-9A-F][0-9A-F]-*")}}
    number = min(set(range(0x10000)) - used)
    path = esp_device_path(partition=int(a.p), partition_uuid=config["partuuid"], file_path=a.l)
    (efivars / f"Boot{{number:04X}}-{{G}}").write_bytes(attrs + encode_load_option(
        description=a.L, device_path=path, options=" ".join(a.rest)))
elif a.B:
    (efivars / f"Boot{{a.b}}-{{G}}").unlink()
    order = efivars / f"BootOrder-{{G}}"
    if order.exists():
        numbers = struct.unpack(f"<{{(order.stat().st_size - 4) // 2}}H", order.read_bytes()[4:])
        keep = [n for n in numbers if n != int(a.b, 16)]
        order.write_bytes(attrs + struct.pack(f"<{{len(keep)}}H", *keep))
elif a.o:
    numbers = [int(n, 16) for n in a.o.split(",")]
    (efivars / f"BootOrder-{{G}}").write_bytes(attrs + struct.pack(f"<{{len(numbers)}}H", *numbers))
"""


class Fake:
    def __init__(self, tmp_path: Path) -> None:
        self.efivars = tmp_path / "efivars"
        self.efivars.mkdir()
        self.log = tmp_path / "calls.log"
        self.log.touch()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        self.program = bin_dir / "efibootmgr"
        self.program.write_text(FAKE.format(python=sys.executable, root=str(ROOT)))
        self.program.chmod(0o755)
        (bin_dir / "fake.json").write_text(json.dumps(
            {"efivars": str(self.efivars), "log": str(self.log), "partuuid": ESP_UUID}))

    def add(self, number: int, description: str, *, options: str = "",
            partuuid: str = ESP_UUID, file_path: str = "\\kiln\\vmlinuz") -> None:
        path = esp_device_path(partition=1, partition_uuid=partuuid, file_path=file_path)
        (self.efivars / f"Boot{number:04X}-{EFI_GLOBAL_VARIABLE}").write_bytes(
            struct.pack("<I", 7) + encode_load_option(description=description,
                                                      device_path=path, options=options))

    def order(self, *numbers: int) -> None:
        (self.efivars / f"BootOrder-{EFI_GLOBAL_VARIABLE}").write_bytes(
            struct.pack("<I", 7) + struct.pack(f"<{len(numbers)}H", *numbers))

    def calls(self) -> list[list[str]]:
        lines = self.log.read_text().splitlines()
        self.log.write_text("")
        return [json.loads(line) for line in lines]

    def ensure(self, console: str = CONSOLE) -> list[int]:
        found = ensure_uefi_entries(esp=ESP, console_args=console, efivars=self.efivars,
                                    efibootmgr=str(self.program))
        return [e.number for e in found]

    def labels(self) -> list[str]:
        return sorted(e.description for e in read_boot_entries(self.efivars))


def test_a_load_option_round_trips() -> None:
    path = esp_device_path(partition=1, partition_uuid=ESP_UUID, file_path="\\kiln\\vmlinuz")
    data = encode_load_option(description="Kiln", device_path=path, options="initrd=\\x a=b")
    option = parse_load_option(3, data)
    assert (option.number, option.description, option.active) == (3, "Kiln", True)
    assert option.file_path == "\\kiln\\vmlinuz"
    assert option.partition_uuid == ESP_UUID
    assert option.options == "initrd=\\x a=b"


def test_binary_optional_data_is_not_text() -> None:
    path = esp_device_path(partition=1, partition_uuid=ESP_UUID, file_path="\\a")
    data = encode_load_option(description="Other", device_path=path, options="") + b"\x01"
    assert parse_load_option(1, data).options is None


def test_the_wanted_entries() -> None:
    wanted = wanted_entries(console_args=CONSOLE)
    assert [(w.label, w.options, w.in_boot_order) for w in wanted] == [
        ("Kiln", f"initrd=\\kiln\\initrd.zst {CONSOLE}", True),
        ("Kiln factory restore", f"initrd=\\kiln\\initrd.zst {CONSOLE} kiln.mode=restore",
         False),
        ("Kiln data erase", f"initrd=\\kiln\\initrd.zst {CONSOLE} kiln.mode=erase", False)]
    assert {w.loader for w in wanted} == {"\\kiln\\vmlinuz"}


@pytest.mark.allow_commands("efibootmgr")
def test_entries_are_created_once_and_normal_goes_first(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    fake.add(0, "UEFI Shell", file_path="\\shell.efi")
    fake.add(1, "UEFI PXE")
    fake.order(1, 0)
    numbers = fake.ensure()
    assert [c[1] for c in fake.calls()] == ["--bootorder"]  # created in efivarfs directly
    assert fake.labels() == ["Kiln", "Kiln data erase", "Kiln factory restore", "UEFI PXE",
                             "UEFI Shell"]
    assert read_boot_order(fake.efivars) == (numbers[0], 1, 0)
    assert fake.ensure() == numbers
    assert fake.calls() == [], "a re-run with nothing changed writes nothing"


@pytest.mark.allow_commands("efibootmgr")
def test_duplicates_and_stale_entries_are_replaced(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    wanted = wanted_entries(console_args=CONSOLE)
    fake.add(4, "Kiln", options=wanted[0].options)
    fake.add(5, "Kiln", options=wanted[0].options)  # a duplicate
    fake.add(6, "Kiln factory restore", options="initrd=\\kiln\\initrd.zst console=ttyS1")
    fake.add(7, "Kiln data erase", options=wanted[2].options, partuuid=OTHER_UUID)
    fake.order(6, 5, 4, 7)
    numbers = fake.ensure()
    assert numbers[0] == 4
    assert sorted(c[2] for c in fake.calls() if "--delete-bootnum" in c) == \
        ["0005", "0006", "0007"]
    assert fake.labels() == ["Kiln", "Kiln data erase", "Kiln factory restore"]
    assert read_boot_order(fake.efivars) == (4,)


@pytest.mark.allow_commands("efibootmgr")
def test_new_console_arguments_replace_the_entries(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    first = fake.ensure()
    fake.calls()
    second = fake.ensure("console=ttyS1,9600")
    calls = fake.calls()
    assert sum("--delete-bootnum" in c for c in calls) == 3
    assert not [c for c in calls if "--create-only" in c]
    assert len(read_boot_entries(fake.efivars)) == 3
    assert read_boot_order(fake.efivars)[0] == second[0]
    assert first  # both runs returned three entries
