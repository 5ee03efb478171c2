"""Kiln's QEMU lab: boot real firmware, real PXE and a real kernel in throw-away VMs.

Tests and the demo use it; it imports only `kiln`. See lab/README.md.
"""

from lab.accel import ENV_ACCEL, Accel, detect_accelerator, host_accelerator
from lab.errors import ConsoleTimeout, LabError, QmpError, VmExited
from lab.httpd import GUEST_HOST, HttpServer
from lab.initrd import Compression, busybox_initrd
from lab.kernel import extract_vmlinux
from lab.pxe import IpxeBoot, pxe_nic, write_ipxe_script
from lab.qmp import Qmp
from lab.spec import (
    BootDevice,
    DirectKernel,
    Disk,
    DiskFormat,
    DiskInterface,
    Firmware,
    Nic,
    NicModel,
    OvmfFiles,
    Smbios,
    VmSpec,
)
from lab.vm import ENV_KEEP, Lab, Vm

__all__ = [
    "ENV_ACCEL",
    "ENV_KEEP",
    "GUEST_HOST",
    "Accel",
    "BootDevice",
    "Compression",
    "ConsoleTimeout",
    "DirectKernel",
    "Disk",
    "DiskFormat",
    "DiskInterface",
    "Firmware",
    "HttpServer",
    "IpxeBoot",
    "Lab",
    "LabError",
    "Nic",
    "NicModel",
    "OvmfFiles",
    "Qmp",
    "QmpError",
    "Smbios",
    "Vm",
    "VmExited",
    "VmSpec",
    "busybox_initrd",
    "detect_accelerator",
    "extract_vmlinux",
    "host_accelerator",
    "pxe_nic",
    "write_ipxe_script",
]
