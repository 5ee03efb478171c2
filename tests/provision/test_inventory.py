from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.blockdev import DiskTransport, transport_of
from provision.inventory import (
    InventoryError,
    MemorySource,
    find_serial,
    is_placeholder_serial,
    read_inventory,
    unit_report,
)
from tests.provision.machines import GIB, MEMORY_BLOCK_BYTES, FakeMachine, edge_two_disks, qemu_q35


def test_qemu_vm_inventory(tmp_path: Path) -> None:
    qemu_q35(tmp_path)
    inventory = read_inventory(tmp_path)
    assert inventory.dmi["sys_vendor"] == "QEMU"
    assert inventory.dmi["chassis_serial"] == ""
    assert "board_name" not in inventory.dmi
    assert inventory.serial == "KILN-LAB-0001"
    cpu = inventory.cpu
    assert (cpu.model, cpu.sockets, cpu.cores, cpu.threads) == (
        "Intel Core Processor (Skylake, IBRS)", 1, 2, 2)
    assert "aes" in cpu.flags
    assert inventory.memory_bytes == 2 * GIB
    assert inventory.memory_source is MemorySource.MEMORY_BLOCKS
    disks = {disk.name: disk for disk in inventory.disks}
    assert sorted(disks) == ["nvme0n1", "sda", "vda"]  # loop0, zram0, sr0 left out
    vda, nvme, stick = disks["vda"], disks["nvme0n1"], disks["sda"]
    assert (vda.transport, vda.size_bytes, vda.serial, vda.path, vda.rotational) == (
        DiskTransport.VIRTIO, 40 * GIB, "kiln-vda", "/dev/vda", True)
    assert vda.sysfs_path == "/sys/devices/pci0000:00/0000:00:01.2/0000:03:00.0/virtio2/block/vda"
    assert (nvme.transport, nvme.model, nvme.serial) == (
        DiskTransport.NVME, "QEMU NVMe Ctrl", "deadbeef")
    assert (stick.transport, stick.removable, stick.model, stick.vendor) == (
        DiskTransport.USB, True, "QEMU HARDDISK", "QEMU")
    assert [(nic.name, nic.mac, nic.driver) for nic in inventory.nics] == [
        ("enp0s2", "52:54:00:12:34:56", "e1000")]
    assert ("8086", "100e") in {(d.vendor_id, d.device_id) for d in inventory.pci}
    assert [(d.name, d.vendor_id, d.product_id) for d in inventory.usb] == [
        ("2-1", "46f4", "0001"), ("usb2", "1d6b", "0002")]


def test_sata_dom_serial_from_vpd_page_and_macs_lower_case(tmp_path: Path) -> None:
    inventory = read_inventory(edge_two_disks(tmp_path).root)
    dom = next(disk for disk in inventory.disks if disk.name == "sda")
    assert (dom.transport, dom.serial, dom.model) == (
        DiskTransport.SATA, "20190812AA0001234", "SATADOM-SL 3ME3")
    assert inventory.macs == ("ac:1f:6b:4a:10:00", "ac:1f:6b:4a:10:01", "ac:1f:6b:4a:10:02",
                              "ac:1f:6b:4a:10:03")
    assert (inventory.cpu.cores, inventory.cpu.sockets) == (4, 1)


@pytest.mark.parametrize(("path", "transport"), [
    ("devices/pci0000:00/0000:00:14.0/usb2/2-3/2-3:1.0/host4/target4:0:0/4:0:0:0/block/sdb",
     DiskTransport.USB),
    ("devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0/block/sda",
     DiskTransport.SATA),
    ("devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1", DiskTransport.NVME),
    ("devices/pci0000:00/0000:00:04.0/virtio1/block/vda", DiskTransport.VIRTIO),
    ("devices/pci0000:00/0000:00:1a.0/mmc_host/mmc0/mmc0:0001/block/mmcblk0",
     DiskTransport.MMC),
    ("devices/pci0000:00/0000:00:01.0/0000:01:00.0/host0/port-0:0/end_device-0:0/"
     "target0:0:0/0:0:0:0/block/sda", DiskTransport.SAS),
    ("devices/platform/host0/block/sdz", DiskTransport.UNKNOWN),
])
def test_transport_from_resolved_path(path: str, transport: DiskTransport) -> None:
    assert transport_of(Path(path)) is transport


@pytest.mark.parametrize("value", ["To Be Filled By O.E.M.", "Default string", "0123456789",
                                   "System Serial Number", "", "  ", "00000000", "Not Specified"])
def test_placeholder_serials(value: str) -> None:
    assert is_placeholder_serial(value)


def test_serial_falls_back_to_board_then_chassis() -> None:
    assert find_serial({"product_serial": "Default string", "board_serial": "ZM1",
                        "chassis_serial": "C1"}) == "ZM1"
    assert find_serial({"product_serial": "0123456789", "chassis_serial": "C1"}) == "C1"


def test_placeholder_serial_machine(tmp_path: Path) -> None:
    machine = qemu_q35(tmp_path)
    machine.dmi(product_serial="To Be Filled By O.E.M.", board_serial="Default string",
                chassis_serial="0123456789")
    inventory = read_inventory(tmp_path)
    assert inventory.serial is None
    with pytest.raises(InventoryError, match=r"no real serial.*'To Be Filled By O\.E\.M\.'"):
        inventory.require_serial()
    with pytest.raises(InventoryError, match="a factory needs one"):
        unit_report(inventory, variant="qemu-lab")


def test_unreadable_dmi_field_is_absent(tmp_path: Path) -> None:
    machine = qemu_q35(tmp_path)
    (machine.root / "sys/class/dmi/id/product_serial").unlink()
    (machine.root / "sys/class/dmi/id/product_serial").mkdir()  # reading it fails
    inventory = read_inventory(tmp_path)
    assert "product_serial" not in inventory.dmi
    assert inventory.serial is None


def test_unit_report(tmp_path: Path) -> None:
    inventory = read_inventory(qemu_q35(tmp_path).root)
    report = unit_report(inventory, variant="qemu-lab").to_json()
    assert (report["serial"], report["variant"], report["macs"]) == (
        "KILN-LAB-0001", "qemu-lab", ["52:54:00:12:34:56"])
    assert report["dmi"]["sys_vendor"] == "QEMU"
    hardware = json.loads(json.dumps(report["hardware"]))
    assert hardware["memory_source"] == "memory_blocks"
    assert hardware["disks"][0]["transport"] == "nvme"
    assert hardware["cpu"]["cores"] == 2


def test_memory_and_cpu_fallbacks(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path)
    machine.write("proc/meminfo", "MemTotal:        1998848 kB\n")
    machine.write("proc/cpuinfo", "processor\t: 0\nmodel name\t: Some CPU\nflags\t: fpu\n\n"
                  "processor\t: 1\nmodel name\t: Some CPU\nflags\t: fpu\n")
    inventory = read_inventory(tmp_path)
    assert (inventory.memory_bytes, inventory.memory_source) == (
        1998848 * 1024, MemorySource.MEMINFO)
    assert (inventory.cpu.threads, inventory.cpu.cores, inventory.cpu.sockets) == (2, 2, 1)
    assert (inventory.dmi, inventory.disks, inventory.nics, inventory.pci, inventory.usb) == (
        {}, (), (), (), ())


def test_offline_memory_blocks_do_not_count(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path)
    machine.memory(4 * GIB)
    machine.write("sys/devices/system/memory/memory0/online", "0\n")
    machine.write("sys/devices/system/memory/memory0/state", "offline\n")
    assert read_inventory(tmp_path).memory_bytes == 4 * GIB - MEMORY_BLOCK_BYTES


def test_this_machine() -> None:
    inventory = read_inventory()
    assert inventory.memory_bytes > 0
    assert inventory.cpu.threads >= 1
    assert inventory.cpu.cores >= 1
    assert inventory.serial is None or inventory.serial.strip()
    assert all(disk.size_bytes >= 0 and disk.path.startswith("/dev/")
               for disk in inventory.disks)
    assert all(len(d.vendor_id) == 4 for d in inventory.pci)
    json.dumps(inventory.to_json())
