"""What a lab VM is made of, as data: firmware, boot source, disks, NICs, identity.

A `VmSpec` says nothing about where its files live or how QEMU is accelerated; `lab.argv`
turns a spec plus those facts into QEMU's command line, and `lab.vm.Vm` runs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from lab.errors import LabError

DEFAULT_MAC = "52:54:00:12:34:56"
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
# NVMe serials are at most 20 ASCII characters.
_NVME_SERIAL_MAX = 20
AHCI_PORTS = 6  # q35's built-in ICH9 AHCI controller has buses ide.0 … ide.5


class Firmware(StrEnum):
    BIOS = "bios"  # SeaBIOS (QEMU's default), legacy boot, iPXE's legacy ROM
    UEFI = "uefi"  # OVMF with a private copy of its variable store


class DiskInterface(StrEnum):
    VIRTIO = "virtio"  # virtio-blk-pci → /dev/vdX
    AHCI = "ahci"  # ide-hd on the q35 AHCI controller → /dev/sdX
    NVME = "nvme"  # nvme with a serial → /dev/nvmeXn1


class RejectedOperation(StrEnum):
    """A block operation the disk fails with EIO (QEMU's blkdebug): a device that rejects a
    command, for the fallback paths of erase."""

    DISCARD = "discard"  # TRIM, NVMe deallocate
    WRITE_ZEROES = "write-zeroes"  # also what QEMU's NVMe Format NVM does to the medium


class DiskFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


class NicModel(StrEnum):
    VIRTIO = "virtio-net-pci"  # default ROM: legacy and EFI iPXE
    E1000 = "e1000"
    E1000E = "e1000e"


class BootDevice(StrEnum):
    DISK = "disk"
    NETWORK = "network"


@dataclass(frozen=True)
class DirectKernel:
    """Boot a kernel straight from the host (`-kernel/-initrd/-append`): no PXE, no disk.

    `kernel` may be the bzImage (`vmlinuz`) or, for the fastest boots on SeaBIOS, the ELF
    `vmlinux` from `lab.kernel.extract_vmlinux` (PVH entry; SeaBIOS only)."""

    kernel: Path
    initrd: Path | None = None
    append: str = "console=ttyS0"


@dataclass(frozen=True)
class Disk:
    """A disk. With `image`, that file is attached as it is (raw or qcow2, detected) and
    survives the VM; if it does not exist yet and `size` is given, a qcow2 is created there.
    Without `image`, a fresh qcow2 of `size` bytes is made in the VM's work dir."""

    size: int | None = None
    interface: DiskInterface = DiskInterface.VIRTIO
    image: Path | None = None
    serial: str | None = None  # NVMe needs one; the lab makes one up when it is missing
    bootindex: int | None = None
    rejects: tuple[RejectedOperation, ...] = ()

    def __post_init__(self) -> None:
        if self.image is None and self.size is None:
            raise LabError("a disk needs a size or an existing image")
        if self.size is not None and self.size <= 0:
            raise LabError(f"disk size must be positive, not {self.size}")
        if self.serial is not None and (
            len(self.serial) > _NVME_SERIAL_MAX or not self.serial.isascii()
            or not self.serial.isprintable()
        ):
            raise LabError(f"disk serial {self.serial!r}: at most 20 printable ASCII characters")


@dataclass(frozen=True)
class Nic:
    """A NIC on its own user-mode network (slirp: DHCP gives 10.0.2.15, the host's
    127.0.0.1 is 10.0.2.2). `tftp` + `bootfile` make QEMU's DHCP/TFTP offer a boot file."""

    mac: str = DEFAULT_MAC
    model: NicModel = NicModel.VIRTIO
    tftp: Path | None = None
    bootfile: str | None = None
    restrict: bool = False  # no route out of the guest's network except to 10.0.2.2 services

    def __post_init__(self) -> None:
        if not _MAC.match(self.mac):
            raise LabError(f"MAC {self.mac!r}: expected six lower-case hex pairs, e.g. "
                           f"{DEFAULT_MAC}")
        if self.bootfile is not None and self.tftp is None:
            raise LabError("a NIC's bootfile needs a tftp directory")


@dataclass(frozen=True)
class Smbios:
    """SMBIOS type 1 (system information): what `/sys/class/dmi/id/product_*` show."""

    manufacturer: str = "Kiln Lab"
    product: str = "Lab Appliance"
    serial: str = "LAB-0001"
    version: str | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class OvmfFiles:
    """OVMF's read-only code and the pristine variable store each VM copies."""

    code: Path = Path("/usr/share/OVMF/OVMF_CODE.fd")
    vars_template: Path = Path("/usr/share/OVMF/OVMF_VARS.fd")


@dataclass(frozen=True)
class VmSpec:
    firmware: Firmware = Firmware.BIOS
    boot: BootDevice | DirectKernel = BootDevice.DISK
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    smbios: Smbios = field(default_factory=Smbios)
    memory_mb: int = 512
    cpus: int = 1
    cpu: str | None = None  # None: the accelerator's choice (host for KVM, qemu64 for TCG)
    # UEFI: where the VM's variable store lives. None: a copy in the work dir, removed with
    # it. A path: copied from the template if missing, kept afterwards (boot entries survive
    # into the next VM given the same path).
    efi_vars: Path | None = None
    ovmf: OvmfFiles = field(default_factory=OvmfFiles)
    no_reboot: bool = False  # a guest reboot (or QMP system_reset) ends QEMU instead
    extra_args: tuple[str, ...] = ()  # appended verbatim, for experiments

    def __post_init__(self) -> None:
        if self.memory_mb < 64:
            raise LabError(f"memory {self.memory_mb} MB is too small (64 MB at least)")
        if self.cpus < 1:
            raise LabError(f"cpus must be at least 1, not {self.cpus}")
        if sum(d.interface is DiskInterface.AHCI for d in self.disks) > AHCI_PORTS:
            raise LabError(f"at most {AHCI_PORTS} AHCI disks (one controller)")
        if self.boot is BootDevice.NETWORK and not self.nics:
            raise LabError("network boot needs a NIC")
        if self.efi_vars is not None and self.firmware is not Firmware.UEFI:
            raise LabError("efi_vars is only for UEFI firmware")
