"""QEMU command lines for each kind of VmSpec (no QEMU runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab import (
    Accel,
    BootDevice,
    DirectKernel,
    Disk,
    DiskFormat,
    DiskInterface,
    Firmware,
    LabError,
    Nic,
    NicModel,
    Smbios,
    VmSpec,
)
from lab.argv import AttachedDisk, VmFiles, build_argv
from lab.spec import RejectedOperation

WORK = Path("/w")


def files(spec: VmSpec, *, formats: tuple[DiskFormat, ...] = ()) -> VmFiles:
    disks = tuple(
        AttachedDisk(disk=disk, path=disk.image or WORK / f"disk{i}.qcow2",
                     format=formats[i] if i < len(formats) else DiskFormat.QCOW2)
        for i, disk in enumerate(spec.disks)
    )
    efi_vars = (spec.efi_vars or WORK / "OVMF_VARS.fd") if spec.firmware is Firmware.UEFI else None
    return VmFiles(console=WORK / "console.log", qmp=WORK / "qmp.sock", disks=disks,
                   efi_vars=efi_vars)


def argv(spec: VmSpec, accel: Accel = Accel.TCG, **kwargs: tuple[DiskFormat, ...]) -> list[str]:
    return build_argv(spec, accel=accel, files=files(spec, **kwargs))


def values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


def test_common_options_for_a_bios_vm() -> None:
    command = argv(VmSpec(memory_mb=768, cpus=2, smbios=Smbios(serial="SN-1")))
    assert command[0] == "qemu-system-x86_64"
    assert values(command, "-machine") == ["q35"]
    assert values(command, "-m") == ["768"]
    assert values(command, "-smp") == ["2"]
    assert values(command, "-display") == ["none"]
    assert values(command, "-monitor") == ["none"]
    assert values(command, "-serial") == ["file:/w/console.log"]
    assert values(command, "-qmp") == ["unix:/w/qmp.sock,server=on,wait=off"]
    assert "-nodefaults" in command
    assert "-no-reboot" not in command
    assert not any("pflash" in arg for arg in command)
    assert values(command, "-smbios") == [
        "type=1,manufacturer=Kiln Lab,product=Lab Appliance,serial=SN-1"]
    assert values(command, "-boot") == ["c"]


def test_accelerators() -> None:
    assert values(argv(VmSpec()), "-accel") == ["tcg"]
    assert values(argv(VmSpec()), "-cpu") == ["qemu64"]
    assert values(argv(VmSpec(), Accel.KVM), "-accel") == ["kvm"]
    assert values(argv(VmSpec(), Accel.KVM), "-cpu") == ["host"]
    assert values(argv(VmSpec(cpu="max")), "-cpu") == ["max"]
    assert Accel.TCG.timeout_factor == 1.0
    assert Accel.KVM.timeout_factor < 1.0


def test_uefi_uses_read_only_code_and_the_vms_own_vars(tmp_path: Path) -> None:
    command = argv(VmSpec(firmware=Firmware.UEFI))
    assert values(command, "-drive") == [
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
        "if=pflash,format=raw,unit=1,file=/w/OVMF_VARS.fd",
    ]
    kept = tmp_path / "unit-1.vars"
    command = argv(VmSpec(firmware=Firmware.UEFI, efi_vars=kept))
    assert values(command, "-drive")[1] == f"if=pflash,format=raw,unit=1,file={kept}"
    assert "-boot" not in command


def test_disks_of_every_interface() -> None:
    raw = Path("/images/built,with,mkfs.img")
    spec = VmSpec(disks=(
        Disk(size=1 << 30),
        Disk(size=1 << 30, interface=DiskInterface.AHCI, serial="SATA1"),
        Disk(size=1 << 30, interface=DiskInterface.NVME),
        Disk(size=1 << 30, interface=DiskInterface.NVME, serial="NV-2"),
        Disk(image=raw, interface=DiskInterface.AHCI),
    ))
    command = argv(spec, formats=(DiskFormat.QCOW2,) * 4 + (DiskFormat.RAW,))
    assert values(command, "-drive") == [
        "file=/w/disk0.qcow2,if=none,id=disk0,format=qcow2,discard=unmap",
        "file=/w/disk1.qcow2,if=none,id=disk1,format=qcow2,discard=unmap",
        "file=/w/disk2.qcow2,if=none,id=disk2,format=qcow2,discard=unmap",
        "file=/w/disk3.qcow2,if=none,id=disk3,format=qcow2,discard=unmap",
        "file=/images/built,,with,,mkfs.img,if=none,id=disk4,format=raw,discard=unmap",
    ]
    assert values(command, "-device") == [
        "virtio-blk-pci,drive=disk0",
        "ide-hd,drive=disk1,bus=ide.0,serial=SATA1",
        "nvme,drive=disk2,serial=LABNVME0002",
        "nvme,drive=disk3,serial=NV-2",
        "ide-hd,drive=disk4,bus=ide.1",
    ]


def test_a_disk_that_rejects_operations_goes_through_blkdebug() -> None:
    spec = VmSpec(disks=(Disk(size=1 << 30, interface=DiskInterface.NVME, rejects=(
        RejectedOperation.WRITE_ZEROES, RejectedOperation.DISCARD)),))
    command = argv(spec, formats=(DiskFormat.QCOW2,))
    assert "-drive" not in command
    backend = json.loads(values(command, "-blockdev")[0])
    assert backend["driver"] == "blkdebug" and backend["node-name"] == "disk0"
    assert backend["image"]["file"]["filename"] == "/w/disk0.qcow2"
    assert [(e["iotype"], e["errno"]) for e in backend["inject-error"]] == [
        ("write-zeroes", 5), ("discard", 5)]
    assert values(command, "-device") == ["nvme,drive=disk0,serial=LABNVME0000"]


def test_disk_bootindex_replaces_boot_c() -> None:
    command = argv(VmSpec(disks=(Disk(size=1 << 20), Disk(size=1 << 20, bootindex=1))))
    assert values(command, "-device")[1] == "virtio-blk-pci,drive=disk1,bootindex=1"
    assert "-boot" not in command


def test_direct_kernel_boot() -> None:
    spec = VmSpec(boot=DirectKernel(kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd.gz"),
                                    append="console=ttyS0 quiet"))
    command = argv(spec)
    assert values(command, "-kernel") == ["/k/vmlinuz"]
    assert values(command, "-initrd") == ["/k/initrd.gz"]
    assert values(command, "-append") == ["console=ttyS0 quiet"]
    assert "-boot" not in command
    without_initrd = argv(VmSpec(boot=DirectKernel(kernel=Path("/k/vmlinuz"))))
    assert "-initrd" not in without_initrd


def test_network_boot_on_bios_and_uefi() -> None:
    tftp = Path("/srv/tftp")
    nics = (Nic(mac="52:54:00:00:00:01", tftp=tftp, bootfile="boot.ipxe"),
            Nic(mac="52:54:00:00:00:02", model=NicModel.E1000, restrict=True))
    bios = argv(VmSpec(boot=BootDevice.NETWORK, nics=nics))
    assert values(bios, "-netdev") == [
        "user,id=net0,tftp=/srv/tftp,bootfile=boot.ipxe", "user,id=net1,restrict=on"]
    assert values(bios, "-device") == [
        "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01",
        "e1000,netdev=net1,mac=52:54:00:00:00:02",
    ]
    assert values(bios, "-boot") == ["n"]

    uefi = argv(VmSpec(firmware=Firmware.UEFI, boot=BootDevice.NETWORK, nics=nics))
    assert values(uefi, "-device") == [
        "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,bootindex=1",
        "e1000,netdev=net1,mac=52:54:00:00:00:02",
    ]
    assert "-boot" not in uefi


def test_network_boot_uses_the_nic_with_a_bootfile() -> None:
    nics = (Nic(mac="52:54:00:00:00:01"),
            Nic(mac="52:54:00:00:00:02", tftp=Path("/t"), bootfile="boot.ipxe"))
    uefi = argv(VmSpec(firmware=Firmware.UEFI, boot=BootDevice.NETWORK, nics=nics))
    assert values(uefi, "-device")[1].endswith(",bootindex=1")
    assert not values(uefi, "-device")[0].endswith(",bootindex=1")


def test_smbios_values_are_escaped_and_optional_fields_added() -> None:
    spec = VmSpec(smbios=Smbios(manufacturer="Acme, Inc.", product="Box", serial="S1",
                                version="2", uuid="6a2f4b8c-0000-4000-8000-000000000001"),
                  no_reboot=True, extra_args=("-d", "guest_errors"))
    command = argv(spec)
    assert values(command, "-smbios") == [
        "type=1,manufacturer=Acme,, Inc.,product=Box,serial=S1,version=2,"
        "uuid=6a2f4b8c-0000-4000-8000-000000000001"]
    assert "-no-reboot" in command
    assert command[-2:] == ["-d", "guest_errors"]


@pytest.mark.parametrize(("make", "message"), [
    (Disk, "size or an existing image"),
    (lambda: Disk(size=0), "positive"),
    (lambda: Disk(size=1, serial="x" * 21), "20 printable"),
    (lambda: Nic(mac="52-54-00-12-34-56"), "MAC"),
    (lambda: Nic(bootfile="boot.ipxe"), "tftp"),
    (lambda: VmSpec(memory_mb=16), "too small"),
    (lambda: VmSpec(cpus=0), "cpus"),
    (lambda: VmSpec(boot=BootDevice.NETWORK), "needs a NIC"),
    (lambda: VmSpec(efi_vars=Path("/v")), "only for UEFI"),
    (lambda: VmSpec(disks=(Disk(size=1, interface=DiskInterface.AHCI),) * 7), "AHCI"),
])
def test_bad_specs_are_rejected(make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(LabError, match=message):
        make()
