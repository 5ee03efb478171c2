from __future__ import annotations

from pathlib import Path
from typing import Any

from provision.inventory import read_inventory
from provision.validate import validate
from tests.provision.conftest import MakeManufData, variant
from tests.provision.machines import GIB, edge_two_disks, qemu_q35


def _qemu_needs_four_cores(document: dict[str, Any]) -> None:
    variant(document, "qemu-lab")["cpu"] = {"min_cores": 4, "sockets": 1}


def test_qemu_vm_passes(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    result = validate(make_manufdata(), read_inventory(qemu_q35(tmp_path).root))
    assert result.ok, result.report()
    assert result.variant is not None and result.variant.name == "qemu-lab"
    assert result.problems == ()
    assert result.primary_disk is not None and result.primary_disk.path == "/dev/vda"
    assert (result.recovery_disk, result.data_disks) == (None, ())
    report = result.report()
    assert report.startswith("Hardware validation passed: variant qemu-lab")
    assert "targets: primary /dev/vda" in report


def test_too_little_memory(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    result = validate(make_manufdata(), read_inventory(qemu_q35(tmp_path,
                                                                memory_bytes=GIB).root))
    assert [m.what for m in result.mismatches] == ["memory"]
    assert result.mismatches[0].expected.startswith("2.00 GiB +/- 10%")
    assert "1.00 GiB" in result.mismatches[0].found
    assert result.primary_disk is None


def test_wrong_disk_count(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    machine = qemu_q35(tmp_path, extra_virtio_disk=True)
    result = validate(make_manufdata(), read_inventory(machine.root))
    assert [m.what for m in result.mismatches] == ["disks[0]"]
    assert result.mismatches[0].found.startswith("2 fitting: vda, vdb")


def test_missing_disk(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    machine = qemu_q35(tmp_path, with_virtio_disk=False)
    result = validate(make_manufdata(), read_inventory(machine.root))
    (mismatch,) = result.mismatches
    assert mismatch.found.startswith("0 fitting; nvme0n1 (nvme, 68.7 GB")
    assert "transport nvme" in mismatch.found


def test_wrong_cpu_count(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    result = validate(make_manufdata(_qemu_needs_four_cores),
                      read_inventory(qemu_q35(tmp_path).root))
    assert [str(m) for m in result.mismatches] == [
        "cpu.cores: expected 4..any physical cores; found 2 cores (2 threads)"]


def test_three_problems_at_once(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    machine = qemu_q35(tmp_path, memory_bytes=GIB, extra_virtio_disk=True)
    result = validate(make_manufdata(_qemu_needs_four_cores), read_inventory(machine.root))
    assert [m.what for m in result.mismatches] == ["cpu.cores", "memory", "disks[0]"]
    report = result.report()
    assert report.startswith("Hardware validation FAILED: 3 mismatch(es), variant qemu-lab")
    for problem in result.problems:
        assert problem in report
    for detected in ("vdb (virtio", "nvme0n1 (nvme", "sda (usb", "enp0s2 52:54:00:12:34:56",
                     "0000:00:02.0 8086:100e", "2-1 46f4:0001 QEMU USB HARDDRIVE",
                     "1.00 GiB", "sys_vendor='QEMU'"):
        assert detected in report
    assert "spec  disks[0] 1 primary disk(s), virtio, 34.4 GB..any size -> vda" in report


def _any_transport(document: dict[str, Any]) -> None:
    variant(document, "qemu-lab")["disks"][0]["transport"] = "any"


def test_usb_stick_never_primary(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    manufdata = make_manufdata(_any_transport)
    with_nvme = validate(manufdata, read_inventory(
        qemu_q35(tmp_path / "a", with_virtio_disk=False).root))
    assert with_nvme.ok, with_nvme.report()
    assert with_nvme.primary_disk is not None and with_nvme.primary_disk.name == "nvme0n1"
    only_stick = validate(manufdata, read_inventory(
        qemu_q35(tmp_path / "b", with_virtio_disk=False, with_nvme=False).root))
    (mismatch,) = only_stick.mismatches
    assert "sda (usb, 68.7 GB" in mismatch.found
    assert "never a primary disk unless the spec's transport is usb" in mismatch.found


def test_usb_primary_when_the_spec_says_usb(tmp_path: Path,
                                            make_manufdata: MakeManufData) -> None:
    def usb(document: dict[str, Any]) -> None:
        variant(document, "qemu-lab")["disks"][0]["transport"] = "usb"

    result = validate(make_manufdata(usb), read_inventory(qemu_q35(tmp_path).root))
    assert result.primary_disk is not None and result.primary_disk.name == "sda"


def test_no_variant_lists_dmi(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    result = validate(make_manufdata(), read_inventory(qemu_q35(tmp_path,
                                                                sys_vendor="Bochs").root))
    (mismatch,) = result.mismatches
    assert mismatch.what == "variant"
    assert "sys_vendor='Bochs'" in mismatch.found
    assert "product_name='Standard PC (Q35 + ICH9, 2009)'" in mismatch.found
    assert "KILN-LAB-0001" not in mismatch.found
    assert "qemu-lab (sys_vendor='QEMU')" in mismatch.expected
    assert "edge-100 (sys_vendor='Supermicro', product_name='SYS-5019C-*'" in mismatch.expected
    assert result.variant is None
    assert "spec  not checked" in result.report()


def test_placeholder_serial_fails(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    machine = qemu_q35(tmp_path)
    machine.dmi(product_serial="System Serial Number")
    result = validate(make_manufdata(), read_inventory(machine.root))
    assert [m.what for m in result.mismatches] == ["serial"]


def _separate_recovery(document: dict[str, Any]) -> None:
    document["layout"]["recovery_disk"] = "separate"
    document["variants"] = [variant(document, "edge-100")]
    document["hooks"] = []
    variant(document, "edge-100")["disks"].append(
        {"role": "recovery", "min_size_bytes": 16000000000, "max_size_bytes": 64000000000,
         "transport": "sata"})


def test_separate_recovery_on_a_sata_dom(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    result = validate(make_manufdata(_separate_recovery),
                      read_inventory(edge_two_disks(tmp_path).root))
    assert result.ok, result.report()
    assert result.variant is not None and result.variant.name == "edge-100"
    assert result.primary_disk is not None and result.primary_disk.path == "/dev/nvme0n1"
    assert result.recovery_disk is not None and result.recovery_disk.path == "/dev/sda"


def test_edge_every_check_collects(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    machine = edge_two_disks(tmp_path, with_dom=False)
    machine.cpus(model="Intel(R) Xeon(R) E-2124 CPU @ 3.30GHz", sockets=2, cores=4,
                 flags="fpu sse")
    machine.nic("eno5", device="pci0000:00/0000:05:00.0", mac="00:25:90:00:00:01",
                driver="igb")
    (machine.root / "sys/bus/usb/devices/1-4").unlink()
    result = validate(make_manufdata(_separate_recovery), read_inventory(machine.root))
    assert [m.what for m in result.mismatches] == [
        "cpu.model", "cpu.cores", "cpu.sockets", "cpu.flags", "disks[1]", "nics",
        "nics.mac_ouis", "usb[0]"]
    assert result.mismatches[3].found == "missing aes avx2"
    assert "eno5 00:25:90:00:00:01 (igb)" in result.mismatches[6].found


def test_pci_count(tmp_path: Path, make_manufdata: MakeManufData) -> None:
    machine = edge_two_disks(tmp_path)
    machine.pci("0000:06:00.0", vendor="8086", device="1533")
    result = validate(make_manufdata(_separate_recovery), read_inventory(machine.root))
    assert [str(m) for m in result.mismatches] == [
        "pci[0]: expected 2 x 8086:1533 Intel I210; found 3 0000:01:00.0 0000:02:00.0 "
        "0000:06:00.0"]
