"""The unit's hardware inventory, read from sysfs and procfs (never from dmidecode, lspci or
lsblk: the kernel already exposes all of it as files, which tests can fake as fixture trees).

Every reader takes `root` (default `/`) and reads `root/sys/...` and `root/proc/...`. Rules:

- **DMI** values come from `/sys/class/dmi/id/*`, stripped; a missing or unreadable file (the
  serials and the UUID are readable by root only) leaves its key out.
- **Serial**: the first of product_serial, board_serial, chassis_serial that is not a vendor
  placeholder ("To Be Filled By O.E.M.", "Default string", "0123456789", one character
  repeated, …). None found → `Inventory.serial` is None; validation reports it and
  `Inventory.require_serial` / `unit_report` raise, since a factory needs a real serial.
- **CPU**: model name and flags from `/proc/cpuinfo`; sockets, physical cores and threads
  from `/sys/devices/system/cpu/cpuN/topology` (online CPUs), else from cpuinfo.
- **Memory**: the sum of online `/sys/devices/system/memory` blocks * `block_size_bytes`
  (what is installed, near the DIMMs' size) when present, else `/proc/meminfo` MemTotal (what
  the OS sees after the kernel's reservations); `memory_source` says which.
- **Disks** are `/sys/block` entries minus loop, ram, zram, dm-, md, sr, fd, nbd, eMMC boot
  areas, hidden NVMe paths and partitions (see `kiln.blockdev`).
- **NICs** are `/sys/class/net` interfaces with a `device` link (physical ones); MACs are
  lower case.
- **PCI/USB** ids are 4 lower-case hex digits, from `/sys/bus/{pci,usb}/devices`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kiln.blockdev import Disk, DiskTransport, read_disks
from kiln.contract import to_json
from kiln.errors import KilnError
from kiln.serverclient import UnitReport
from kiln.sysfs import read_attr, read_hex_id

__all__ = ["Cpu", "Disk", "DiskTransport", "Inventory", "InventoryError", "MemorySource",
           "Nic", "PciDevice", "UsbDevice", "find_serial", "read_inventory", "unit_report"]

DMI_FIELDS = ("sys_vendor", "product_name", "product_version", "product_serial",
              "product_uuid", "board_vendor", "board_name", "board_serial", "chassis_serial",
              "bios_vendor", "bios_version")
SERIAL_FIELDS = ("product_serial", "board_serial", "chassis_serial")
SERIAL_PLACEHOLDERS = frozenset({
    "", "to be filled by o.e.m.", "default string", "0123456789", "123456789",
    "system serial number", "chassis serial number", "base board serial number",
    "serial number", "not specified", "not applicable", "none", "n/a", "na", "invalid",
    "unknown", "empty", "default", "oem", "o.e.m.", "xxxxxxxxxxxx",
})
_REPEATED_CHARACTER = re.compile(r"^(.)\1*$")
_CPU_DIR = re.compile(r"^cpu\d+$")


class InventoryError(KilnError):
    """The inventory lacks something manufacture cannot do without (a real serial)."""


class MemorySource(enum.StrEnum):
    MEMORY_BLOCKS = "memory_blocks"  # online /sys/devices/system/memory blocks: installed
    MEMINFO = "meminfo"  # /proc/meminfo MemTotal: what the OS sees after reservations


@dataclass(frozen=True, kw_only=True)
class Cpu:
    model: str  # "model name" of the first processor; "" when cpuinfo has none
    sockets: int
    cores: int  # physical cores, all sockets together
    threads: int  # logical CPUs online
    flags: tuple[str, ...]  # sorted


@dataclass(frozen=True, kw_only=True)
class Nic:
    name: str
    mac: str  # lower case
    driver: str  # "" when no driver is bound


@dataclass(frozen=True, kw_only=True)
class PciDevice:
    address: str  # 0000:00:02.0
    vendor_id: str
    device_id: str


@dataclass(frozen=True, kw_only=True)
class UsbDevice:
    name: str  # the sysfs name: 1-1, usb2, …
    vendor_id: str
    product_id: str
    product: str  # the device's product string, "" when it has none


@dataclass(frozen=True, kw_only=True)
class Inventory:
    dmi: Mapping[str, str]
    serial: str | None
    cpu: Cpu
    memory_bytes: int
    memory_source: MemorySource
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    pci: tuple[PciDevice, ...]
    usb: tuple[UsbDevice, ...]

    @property
    def macs(self) -> tuple[str, ...]:
        return tuple(nic.mac for nic in self.nics)

    def require_serial(self) -> str:
        if self.serial is None:
            raise InventoryError(serial_problem(self.dmi))
        return self.serial

    def to_json(self) -> dict[str, Any]:
        """The `hardware` object of the unit report."""
        document: dict[str, Any] = to_json(self)
        return document


def serial_problem(dmi: Mapping[str, str]) -> str:
    seen = ", ".join(f"{name} {dmi[name]!r}" if name in dmi else f"{name} absent"
                     for name in SERIAL_FIELDS)
    return (f"no real serial number in DMI ({seen}): a factory needs one; set it in the "
            "firmware (the board vendor's DMI tool) before manufacturing this unit")


def is_placeholder_serial(value: str) -> bool:
    text = value.strip()
    return text.casefold() in SERIAL_PLACEHOLDERS or bool(_REPEATED_CHARACTER.match(text))


def find_serial(dmi: Mapping[str, str]) -> str | None:
    """The unit's serial: the first real one of product, board and chassis serial."""
    return next((dmi[name] for name in SERIAL_FIELDS
                 if name in dmi and not is_placeholder_serial(dmi[name])), None)


def read_dmi(root: Path = Path("/")) -> Mapping[str, str]:
    directory = root / "sys/class/dmi/id"
    values = {name: value for name in DMI_FIELDS
              if (value := read_attr(directory / name)) is not None}
    return MappingProxyType(values)


def _cpuinfo_blocks(root: Path) -> list[dict[str, str]]:
    text = read_attr(root / "proc/cpuinfo") or ""
    blocks: list[dict[str, str]] = []
    for chunk in text.split("\n\n"):
        block = {key.strip(): value.strip() for key, sep, value in
                 (line.partition(":") for line in chunk.splitlines()) if sep}
        if block:
            blocks.append(block)
    return blocks


def _topology(root: Path) -> list[tuple[str, str, str]]:
    """(package, die, core) of every online logical CPU that has a topology directory."""
    cpus = root / "sys/devices/system/cpu"
    found: list[tuple[str, str, str]] = []
    for directory in sorted(cpus.iterdir()) if cpus.is_dir() else ():
        if not _CPU_DIR.match(directory.name) or read_attr(directory / "online") == "0":
            continue
        topology = directory / "topology"
        package = read_attr(topology / "physical_package_id")
        core = read_attr(topology / "core_id")
        if package is not None and core is not None:
            found.append((package, read_attr(topology / "die_id") or "0", core))
    return found


def read_cpu(root: Path = Path("/")) -> Cpu:
    blocks = [block for block in _cpuinfo_blocks(root) if "processor" in block]
    first = blocks[0] if blocks else {}
    threads = _topology(root) or [
        (block.get("physical id", "0"), "0", block.get("core id", block["processor"]))
        for block in blocks]
    return Cpu(model=first.get("model name", ""),
               sockets=len({package for package, _, _ in threads}),
               cores=len(set(threads)), threads=len(threads),
               flags=tuple(sorted(set(first.get("flags", "").split()))))


def read_memory(root: Path = Path("/")) -> tuple[int, MemorySource]:
    directory = root / "sys/devices/system/memory"
    block_size = read_attr(directory / "block_size_bytes")
    if block_size is not None and directory.is_dir():
        online = [block for block in directory.glob("memory[0-9]*")
                  if read_attr(block / "online") == "1"
                  or read_attr(block / "state") == "online"]
        if online:
            return len(online) * int(block_size, 16), MemorySource.MEMORY_BLOCKS
    for line in (read_attr(root / "proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal":
            amount, *unit = value.split()
            return int(amount) * (1024 if unit == ["kB"] else 1), MemorySource.MEMINFO
    return 0, MemorySource.MEMINFO


def read_nics(root: Path = Path("/")) -> tuple[Nic, ...]:
    directory = root / "sys/class/net"
    nics = []
    for interface in sorted(directory.iterdir()) if directory.is_dir() else ():
        if not (interface / "device").exists():
            continue
        driver = interface / "device/driver"
        nics.append(Nic(name=interface.name,
                        mac=(read_attr(interface / "address") or "").lower(),
                        driver=driver.resolve().name if driver.exists() else ""))
    return tuple(nics)


def read_pci(root: Path = Path("/")) -> tuple[PciDevice, ...]:
    directory = root / "sys/bus/pci/devices"
    devices = []
    for device in sorted(directory.iterdir()) if directory.is_dir() else ():
        vendor, ident = read_hex_id(device / "vendor"), read_hex_id(device / "device")
        if vendor and ident:
            devices.append(PciDevice(address=device.name, vendor_id=vendor, device_id=ident))
    return tuple(devices)


def read_usb(root: Path = Path("/")) -> tuple[UsbDevice, ...]:
    """USB devices (interfaces, which have no idVendor, are left out)."""
    directory = root / "sys/bus/usb/devices"
    devices = []
    for device in sorted(directory.iterdir()) if directory.is_dir() else ():
        vendor, product = read_hex_id(device / "idVendor"), read_hex_id(device / "idProduct")
        if vendor and product:
            devices.append(UsbDevice(name=device.name, vendor_id=vendor, product_id=product,
                                     product=read_attr(device / "product") or ""))
    return tuple(devices)


def read_inventory(root: Path = Path("/")) -> Inventory:
    """Everything the validation and the unit report need; never raises for missing parts
    (an absent serial is `None`, absent devices are empty tuples)."""
    dmi = read_dmi(root)
    memory_bytes, memory_source = read_memory(root)
    return Inventory(dmi=dmi, serial=find_serial(dmi), cpu=read_cpu(root),
                     memory_bytes=memory_bytes, memory_source=memory_source,
                     disks=read_disks(root), nics=read_nics(root), pci=read_pci(root),
                     usb=read_usb(root))


def unit_report(inventory: Inventory, *, variant: str | None) -> UnitReport:
    """What the unit reports to the server; raises `InventoryError` without a real serial."""
    return UnitReport(serial=inventory.require_serial(), variant=variant, dmi=inventory.dmi,
                      macs=inventory.macs, hardware=inventory.to_json())
