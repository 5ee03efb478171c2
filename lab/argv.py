"""QEMU's command line for a `VmSpec`: a pure function of the spec, the accelerator and the
files the VM uses, so every combination can be checked without starting QEMU."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lab.accel import Accel
from lab.spec import (
    BootDevice,
    DirectKernel,
    Disk,
    DiskFormat,
    DiskInterface,
    Firmware,
    Nic,
    VmSpec,
)

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class AttachedDisk:
    """A disk of the spec with the file that backs it."""

    disk: Disk
    path: Path
    format: DiskFormat


@dataclass(frozen=True)
class VmFiles:
    """Where a VM's files are: the serial log, the QMP socket, its disks, its UEFI vars."""

    console: Path
    qmp: Path
    console_socket: Path | None = None  # a unix socket that takes keyboard input
    disks: tuple[AttachedDisk, ...] = ()
    efi_vars: Path | None = None


def option(value: str | os.PathLike[str]) -> str:
    """A value inside a QEMU `key=value,…` option: commas are doubled."""
    return os.fspath(value).replace(",", ",,")


def _serial(files: VmFiles) -> list[str]:
    """The first serial port: everything it prints goes to the console log; with a console
    socket, what is written to the socket reaches the guest as typed input."""
    if files.console_socket is None:
        return ["-serial", f"file:{option(files.console)}"]
    return [
        "-chardev", f"socket,id=serial0,path={option(files.console_socket)},server=on,"
                    f"wait=off,logfile={option(files.console)},logappend=on",
        "-serial", "chardev:serial0",
    ]


def nvme_serial(index: int) -> str:
    return f"LABNVME{index:04d}"


def build_argv(
    spec: VmSpec, *, accel: Accel, files: VmFiles, qemu: str = QEMU
) -> list[str]:
    argv = [
        qemu,
        "-name", option(f"kiln-lab-{spec.smbios.serial}"),
        "-machine", "q35",
        "-accel", accel.value,
        "-cpu", spec.cpu or accel.default_cpu,
        "-m", str(spec.memory_mb),
        "-smp", str(spec.cpus),
        "-nodefaults",
        "-display", "none",
        "-monitor", "none",
        *_serial(files),
        "-qmp", f"unix:{option(files.qmp)},server=on,wait=off",
    ]
    argv += _firmware(spec, files)
    argv += _smbios(spec)
    if spec.no_reboot:
        argv.append("-no-reboot")
    argv += _disks(files.disks)
    argv += _nics(spec)
    argv += _boot(spec, files)
    argv += spec.extra_args
    return argv


def _firmware(spec: VmSpec, files: VmFiles) -> list[str]:
    if spec.firmware is Firmware.BIOS:
        return []  # SeaBIOS is QEMU's default
    if files.efi_vars is None:
        raise ValueError("UEFI needs the VM's copy of the variable store")
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={option(spec.ovmf.code)}",
        "-drive", f"if=pflash,format=raw,unit=1,file={option(files.efi_vars)}",
    ]


def _smbios(spec: VmSpec) -> list[str]:
    fields = {
        "manufacturer": spec.smbios.manufacturer,
        "product": spec.smbios.product,
        "serial": spec.smbios.serial,
        "version": spec.smbios.version,
        "uuid": spec.smbios.uuid,
    }
    text = ",".join(f"{key}={option(value)}" for key, value in fields.items() if value)
    return ["-smbios", f"type=1,{text}"]


def _backend(attached: AttachedDisk, drive: str) -> list[str]:
    """The disk's file; guests' discards reach it (`discard=unmap`: discarded blocks read
    back as zeros); operations the disk `rejects` fail with EIO through blkdebug."""
    if not attached.disk.rejects:
        return ["-drive", f"file={option(attached.path)},if=none,id={drive},"
                          f"format={attached.format.value},discard=unmap"]
    image = {"driver": attached.format.value, "discard": "unmap",
             "file": {"driver": "file", "filename": str(attached.path), "discard": "unmap"}}
    return ["-blockdev", json.dumps({
        "driver": "blkdebug", "node-name": drive, "discard": "unmap", "image": image,
        "inject-error": [{"event": "none", "iotype": str(operation), "errno": 5}
                         for operation in attached.disk.rejects]}, separators=(",", ":"))]


def _disks(disks: tuple[AttachedDisk, ...]) -> list[str]:
    argv: list[str] = []
    ahci_port = 0
    for index, attached in enumerate(disks):
        disk = attached.disk
        drive = f"disk{index}"
        argv += _backend(attached, drive)
        match disk.interface:
            case DiskInterface.VIRTIO:
                device = f"virtio-blk-pci,drive={drive}"
            case DiskInterface.AHCI:
                device = f"ide-hd,drive={drive},bus=ide.{ahci_port}"
                ahci_port += 1
            case DiskInterface.NVME:
                device = f"nvme,drive={drive},serial={option(disk.serial or nvme_serial(index))}"
        if disk.serial is not None and disk.interface is not DiskInterface.NVME:
            device += f",serial={option(disk.serial)}"
        if disk.bootindex is not None:
            device += f",bootindex={disk.bootindex}"
        argv += ["-device", device]
    return argv


def _boot_nic(spec: VmSpec) -> int | None:
    """Which NIC network boot uses: the first with a boot file, else the first."""
    if spec.boot is not BootDevice.NETWORK:
        return None
    with_bootfile = [i for i, nic in enumerate(spec.nics) if nic.bootfile]
    return with_bootfile[0] if with_bootfile else 0


def _netdev(index: int, nic: Nic) -> str:
    netdev = f"user,id=net{index}"
    if nic.tftp is not None:
        netdev += f",tftp={option(nic.tftp)}"
    if nic.bootfile is not None:
        netdev += f",bootfile={option(nic.bootfile)}"
    if nic.restrict:
        netdev += ",restrict=on"
    return netdev


def _nics(spec: VmSpec) -> list[str]:
    argv: list[str] = []
    boot_nic = _boot_nic(spec)
    for index, nic in enumerate(spec.nics):
        device = f"{nic.model.value},netdev=net{index},mac={nic.mac}"
        if index == boot_nic and spec.firmware is Firmware.UEFI:
            device += ",bootindex=1"
        argv += ["-netdev", _netdev(index, nic), "-device", device]
    return argv


def _boot(spec: VmSpec, files: VmFiles) -> list[str]:
    boot = spec.boot
    if isinstance(boot, DirectKernel):
        argv = ["-kernel", os.fspath(boot.kernel)]
        if boot.initrd is not None:
            argv += ["-initrd", os.fspath(boot.initrd)]
        return [*argv, "-append", boot.append]
    if spec.firmware is Firmware.UEFI:
        return []  # UEFI: bootindex on the NIC (network) or NVRAM and disk bootindex (disk)
    if boot is BootDevice.NETWORK:
        return ["-boot", "n"]
    if any(d.disk.bootindex is not None for d in files.disks):
        return []
    return ["-boot", "c"]
