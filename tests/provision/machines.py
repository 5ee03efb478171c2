"""Fake machines as fixture trees: the sysfs and procfs files `provision.inventory` reads,
laid out as the kernel lays them out, with `/sys/block`, `/sys/class/net` and `/sys/bus`
entries as symlinks into `/sys/devices` (made at test time, so nothing committed is a link).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1024**2
GIB = 1024**3
MEMORY_BLOCK_BYTES = 128 * MIB


@dataclass(frozen=True)
class FakeMachine:
    root: Path

    def write(self, relative: str, text: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def link(self, relative: str, target: str) -> None:
        """`relative` becomes a relative symlink to `target` (both below the root)."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (self.root / target).mkdir(parents=True, exist_ok=True)
        path.symlink_to(os.path.relpath(self.root / target, path.parent))

    def dmi(self, **values: str) -> None:
        for name, value in values.items():
            self.write(f"sys/class/dmi/id/{name}", value + "\n")

    def cpus(self, *, model: str, sockets: int, cores: int, threads_per_core: int = 1,
             flags: str = "fpu sse sse2 aes avx avx2") -> None:
        """`cores` per socket; writes /proc/cpuinfo and each CPU's topology."""
        blocks, number = [], 0
        for socket in range(sockets):
            for core in range(cores):
                for _ in range(threads_per_core):
                    blocks.append(
                        f"processor\t: {number}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
                        f"model\t\t: 158\nmodel name\t: {model}\nphysical id\t: {socket}\n"
                        f"siblings\t: {cores * threads_per_core}\ncore id\t\t: {core}\n"
                        f"cpu cores\t: {cores}\nflags\t\t: {flags}\n")
                    topology = f"sys/devices/system/cpu/cpu{number}/topology"
                    self.write(f"{topology}/physical_package_id", f"{socket}\n")
                    self.write(f"{topology}/die_id", "0\n")
                    self.write(f"{topology}/core_id", f"{core}\n")
                    if number:
                        self.write(f"sys/devices/system/cpu/cpu{number}/online", "1\n")
                    number += 1
        self.write("proc/cpuinfo", "\n".join(blocks) + "\n")
        self.write("sys/devices/system/cpu/online", f"0-{number - 1}\n")

    def memory(self, installed_bytes: int, *, reserved_bytes: int = 150 * MIB) -> None:
        total_kib = (installed_bytes - reserved_bytes) // 1024
        self.write("proc/meminfo", f"MemTotal:       {total_kib} kB\nMemFree:  1000 kB\n")
        self.write("sys/devices/system/memory/block_size_bytes",
                   f"{MEMORY_BLOCK_BYTES:x}\n")
        for block in range(installed_bytes // MEMORY_BLOCK_BYTES):
            self.write(f"sys/devices/system/memory/memory{block}/online", "1\n")
            self.write(f"sys/devices/system/memory/memory{block}/state", "online\n")

    def disk(self, name: str, *, block: str, device: str, size_bytes: int, model: str = "",
             vendor: str | None = None, serial: str = "", serial_file: str = "device/serial",
             removable: bool = False, rotational: bool = False, read_only: bool = False) -> None:
        """`block`: the disk's directory below sys/devices; `device`: its `device` link's
        target there (holds model, vendor, serial)."""
        base = f"sys/devices/{block}"
        self.write(f"{base}/size", f"{size_bytes // 512}\n")
        self.write(f"{base}/ro", f"{int(read_only)}\n")
        self.write(f"{base}/removable", f"{int(removable)}\n")
        self.write(f"{base}/queue/rotational", f"{int(rotational)}\n")
        self.link(f"{base}/device", f"sys/devices/{device}")
        if model:
            self.write(f"sys/devices/{device}/model", model + "\n")
        if vendor is not None:
            self.write(f"sys/devices/{device}/vendor", vendor + "\n")
        if serial:
            self.write(f"{base}/{serial_file}", serial + "\n")
        self.link(f"sys/block/{name}", base)

    def virtual_disk(self, name: str, *, size_bytes: int = 0) -> None:
        self.write(f"sys/devices/virtual/block/{name}/size", f"{size_bytes // 512}\n")
        self.link(f"sys/block/{name}", f"sys/devices/virtual/block/{name}")

    def nic(self, name: str, *, device: str, mac: str, driver: str) -> None:
        base = f"sys/devices/{device}/net/{name}"
        self.write(f"{base}/address", mac + "\n")
        self.link(f"{base}/device", f"sys/devices/{device}")
        self.link(f"sys/devices/{device}/driver", f"sys/bus/pci/drivers/{driver}")
        self.link(f"sys/class/net/{name}", base)

    def virtual_nic(self, name: str, *, mac: str = "00:00:00:00:00:00") -> None:
        self.write(f"sys/devices/virtual/net/{name}/address", mac + "\n")
        self.link(f"sys/class/net/{name}", f"sys/devices/virtual/net/{name}")

    def pci(self, address: str, *, vendor: str, device: str) -> None:
        base = f"sys/devices/pci0000:00/{address}"
        self.write(f"{base}/vendor", f"0x{vendor}\n")
        self.write(f"{base}/device", f"0x{device}\n")
        self.link(f"sys/bus/pci/devices/{address}", base)

    def usb(self, name: str, *, path: str, vendor: str, product: str, label: str = "") -> None:
        """A USB device at `path` below sys/devices, with one interface (no ids)."""
        base = f"sys/devices/{path}"
        self.write(f"{base}/idVendor", vendor + "\n")
        self.write(f"{base}/idProduct", product + "\n")
        if label:
            self.write(f"{base}/product", label + "\n")
        self.write(f"{base}/{name}:1.0/bInterfaceClass", "08\n")
        self.link(f"sys/bus/usb/devices/{name}", base)
        self.link(f"sys/bus/usb/devices/{name}:1.0", f"{base}/{name}:1.0")


def qemu_q35(root: Path, *, memory_bytes: int = 2 * GIB, cores: int = 2,
             sys_vendor: str = "QEMU", with_virtio_disk: bool = True,
             with_nvme: bool = True, extra_virtio_disk: bool = False) -> FakeMachine:
    """A QEMU q35 VM as the lab starts it: SeaBIOS, a virtio disk, an NVMe disk, an e1000,
    a USB stick on the EHCI controller (usb-storage), plus loop, zram and a CD-ROM."""
    machine = FakeMachine(root)
    machine.dmi(sys_vendor=sys_vendor, product_name="Standard PC (Q35 + ICH9, 2009)",
                product_version="pc-q35-7.2", product_serial="KILN-LAB-0001",
                product_uuid="6f1c2a8e-3b0d-4c55-9d1e-8a7b6c5d4e3f", chassis_serial="",
                bios_vendor="SeaBIOS", bios_version="1.16.2-debian-1.16.2-1")
    machine.cpus(model="Intel Core Processor (Skylake, IBRS)", sockets=1, cores=cores)
    machine.memory(memory_bytes)
    if with_virtio_disk:
        machine.disk("vda", block="pci0000:00/0000:00:01.2/0000:03:00.0/virtio2/block/vda",
                     device="pci0000:00/0000:00:01.2/0000:03:00.0/virtio2",
                     size_bytes=40 * GIB, vendor="0x1af4", serial="kiln-vda",
                     serial_file="serial", rotational=True)
    if extra_virtio_disk:
        machine.disk("vdb", block="pci0000:00/0000:00:01.4/0000:05:00.0/virtio4/block/vdb",
                     device="pci0000:00/0000:00:01.4/0000:05:00.0/virtio4",
                     size_bytes=40 * GIB, vendor="0x1af4", serial="kiln-vdb",
                     serial_file="serial", rotational=True)
    if with_nvme:
        nvme = "pci0000:00/0000:00:01.3/0000:04:00.0/nvme/nvme0"
        machine.disk("nvme0n1", block=f"{nvme}/nvme0n1", device=nvme, size_bytes=64 * GIB,
                     model="QEMU NVMe Ctrl", serial="deadbeef")
        machine.write(f"sys/devices/{nvme}/nvme0n1/wwid", "nvme.1b36-6465616462656566-00\n")
    stick = "pci0000:00/0000:00:1d.7/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
    machine.disk("sda", block=f"{stick}/block/sda", device=stick, size_bytes=64 * GIB,
                 model="QEMU HARDDISK", vendor="QEMU", removable=True,
                 serial="1-0000:00:1d.7-1", serial_file="device/wwid")
    machine.usb("usb2", path="pci0000:00/0000:00:1d.7/usb2", vendor="1d6b", product="0002",
                label="EHCI Host Controller")
    machine.usb("2-1", path="pci0000:00/0000:00:1d.7/usb2/2-1", vendor="46f4",
                product="0001", label="QEMU USB HARDDRIVE")
    machine.write("sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/"
                  "block/sr0/size", "0\n")
    machine.link("sys/block/sr0", "sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/"
                 "target0:0:0/0:0:0:0/block/sr0")
    machine.virtual_disk("loop0")
    machine.virtual_disk("zram0", size_bytes=GIB)
    machine.nic("enp0s2", device="pci0000:00/0000:00:02.0", mac="52:54:00:12:34:56",
                driver="e1000")
    machine.virtual_nic("lo")
    for address, vendor, device in (("0000:00:00.0", "8086", "29c0"),
                                    ("0000:00:01.0", "1234", "1111"),
                                    ("0000:00:02.0", "8086", "100E"),
                                    ("0000:00:1d.7", "8086", "293a"),
                                    ("0000:00:1f.2", "8086", "2922"),
                                    ("0000:03:00.0", "1af4", "1042"),
                                    ("0000:04:00.0", "1b36", "0010")):
        machine.pci(address, vendor=vendor, device=device)
    return machine


def edge_two_disks(root: Path, *, with_dom: bool = True) -> FakeMachine:
    """An Acme Edge 100 (Supermicro X11SCL-F) with an NVMe for PRIMARY and a SATA DOM for
    a separate RECOVERY."""
    machine = FakeMachine(root)
    machine.dmi(sys_vendor="Supermicro", product_name="SYS-5019C-M",
                product_version="0123456789", product_serial="S19C0042",
                board_vendor="Supermicro", board_name="X11SCL-F", board_serial="ZM19AS000123",
                chassis_serial="C5019CA01N20042", bios_vendor="American Megatrends Inc.",
                bios_version="1.4")
    machine.cpus(model="Intel(R) Xeon(R) E-2224 CPU @ 3.40GHz", sockets=1, cores=4)
    machine.memory(16 * GIB, reserved_bytes=400 * MIB)
    nvme = "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0"
    machine.disk("nvme0n1", block=f"{nvme}/nvme0n1", device=nvme, size_bytes=512110190592,
                 model="SAMSUNG MZVL2512HCJQ-00B00", serial="S675NX0T123456")
    if with_dom:
        dom = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0"
        page = b"\x00\x80\x00\x14" + b"   20190812AA0001234   "[:20]
        machine.disk("sda", block=f"{dom}/block/sda", device=dom, size_bytes=32017047552,
                     model="SATADOM-SL 3ME3", vendor="ATA", serial="")
        machine.write(f"sys/devices/{dom}/vpd_pg80", page)
    for index, (address, device, mac) in enumerate((
            ("0000:01:00.0", "1533", "ac:1f:6b:4a:10:00"),
            ("0000:02:00.0", "1533", "AC:1F:6B:4A:10:01"),
            ("0000:03:00.0", "1563", "ac:1f:6b:4a:10:02"),
            ("0000:03:00.1", "1563", "ac:1f:6b:4a:10:03"))):
        machine.pci(address, vendor="8086", device=device)
        machine.nic(f"eno{index + 1}", device=f"pci0000:00/{address}", mac=mac,
                    driver="igb" if device == "1533" else "ixgbe")
    machine.usb("1-4", path="pci0000:00/0000:00:14.0/usb1/1-4", vendor="1050",
                product="0030", label="YubiHSM")
    return machine
