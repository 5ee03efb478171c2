"""One-line texts of specs and detected hardware, for mismatches and the validation report
(console and server log). Sizes: disks in decimal GB (as vendors label them), memory in GiB
(as DIMMs are sized); the exact byte count follows wherever a limit is compared."""

from __future__ import annotations

from kiln.manufdata import (
    CpuSpec,
    DiskSpec,
    DmiMatch,
    MemorySpec,
    NicSpec,
    PciDeviceSpec,
    Transport,
    UsbDeviceSpec,
    Variant,
)
from provision.inventory import Cpu, Disk, Inventory, Nic, PciDevice, UsbDevice

GB = 1000**3
GIB = 1024**3


def gigabytes(size_bytes: int) -> str:
    return f"{size_bytes / GB:.1f} GB"


def gibibytes(size_bytes: int) -> str:
    return f"{size_bytes / GIB:.2f} GiB"


def dmi_match(match: DmiMatch) -> str:
    patterns = {name: value for name, value in vars(match).items() if value is not None}
    return ", ".join(f"{name}={value!r}" for name, value in patterns.items()) or "any unit"


def variant_line(variant: Variant) -> str:
    return f"{variant.name} ({dmi_match(variant.dmi)})"


def cpu_spec(spec: CpuSpec) -> str:
    parts = [f"model {spec.model!r}" if spec.model else "any model"]
    if spec.min_cores is not None or spec.max_cores is not None:
        parts.append(f"cores {spec.min_cores or 1}..{spec.max_cores or 'any'}")
    if spec.sockets is not None:
        parts.append(f"{spec.sockets} socket(s)")
    if spec.flags:
        parts.append("flags " + " ".join(spec.flags))
    return ", ".join(parts)


def cpu(found: Cpu) -> str:
    return (f"model {found.model!r}, {found.sockets} socket(s), {found.cores} core(s), "
            f"{found.threads} thread(s)")


def memory_spec(spec: MemorySpec) -> str:
    margin = int(spec.size_bytes * spec.tolerance_percent / 100)
    low, high = gibibytes(spec.size_bytes - margin), gibibytes(spec.size_bytes + margin)
    return f"{gibibytes(spec.size_bytes)} +/- {spec.tolerance_percent:g}% ({low}..{high})"


def memory(inventory: Inventory) -> str:
    return (f"{gibibytes(inventory.memory_bytes)} ({inventory.memory_bytes} bytes, from "
            f"{inventory.memory_source})")


def disk_spec(spec: DiskSpec) -> str:
    kind = "any transport" if spec.transport is Transport.ANY else spec.transport.value
    high = f"{gigabytes(spec.max_size_bytes)}" if spec.max_size_bytes else "any size"
    text = (f"{spec.count} {spec.role} disk(s), {kind}, {gigabytes(spec.min_size_bytes)}"
            f"..{high}")
    return text + (f", model {spec.model!r}" if spec.model else "")


def disk(found: Disk) -> str:
    flags = [name for name, on in (("removable", found.removable), ("read-only",
             found.read_only), ("rotational", found.rotational)) if on]
    return (f"{found.name} ({found.transport}, {gigabytes(found.size_bytes)}, model "
            f"{found.model!r}, serial {found.serial!r}" + "".join(f", {f}" for f in flags)
            + ")")


def nic_spec(spec: NicSpec) -> str:
    ouis = f", MAC OUI {' or '.join(spec.mac_ouis)}" if spec.mac_ouis else ""
    return f"{spec.count} physical NIC(s){ouis}"


def nic(found: Nic) -> str:
    return f"{found.name} {found.mac} ({found.driver or 'no driver'})"


def pci_spec(spec: PciDeviceSpec) -> str:
    label = f" {spec.description}" if spec.description else ""
    return f"{spec.count} x {spec.vendor_id}:{spec.device_id}{label}"


def pci(found: PciDevice) -> str:
    return f"{found.address} {found.vendor_id}:{found.device_id}"


def usb_spec(spec: UsbDeviceSpec) -> str:
    label = f" {spec.description}" if spec.description else ""
    return f"{spec.count} x {spec.vendor_id}:{spec.product_id}{label}"


def usb(found: UsbDevice) -> str:
    label = f" {found.product}" if found.product else ""
    return f"{found.name} {found.vendor_id}:{found.product_id}{label}"
