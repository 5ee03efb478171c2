"""`kiln lab …`: try a kernel and ramdisk in a VM before it goes to the factory."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lab.httpd import HttpServer
from lab.profile import LabUnit, lab_manufdata
from lab.pxe import IpxeBoot, pxe_nic, write_ipxe_script
from lab.spec import (
    DEFAULT_MAC,
    BootDevice,
    DirectKernel,
    Disk,
    DiskInterface,
    Firmware,
    Nic,
    Smbios,
    VmSpec,
)
from lab.vm import Lab

if TYPE_CHECKING:
    from kiln.cli import CommandTree

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)
_SCALE = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8G, 512M)")
    return int(match.group(1)) * _SCALE[match.group(2).upper()]


def parse_disk(text: str) -> Disk:
    """`SIZE[:virtio|ahci|nvme]`, e.g. `8G`, `512M:nvme`."""
    size_text, _, interface = text.partition(":")
    size = _size(size_text)
    try:
        kind = DiskInterface(interface.strip().lower() or DiskInterface.VIRTIO.value)
    except ValueError:
        choices = "|".join(i.value for i in DiskInterface)
        raise argparse.ArgumentTypeError(
            f"disk interface {interface!r}: expected {choices}") from None
    return Disk(size=size, interface=kind)


def add_commands(tree: CommandTree) -> None:
    lab = tree.group("lab", "boot kernels and ramdisks in QEMU VMs (the test lab)")

    boot = lab.add_parser(
        "boot", help="boot a kernel and ramdisk in a VM and show its console live",
        description="Boot a kernel and ramdisk in a throw-away VM (SeaBIOS or OVMF), "
                    "directly or over PXE (iPXE + HTTP), and copy its serial console to "
                    "stdout until the VM powers off or Ctrl-C. Everything made is removed "
                    "afterwards unless --keep.",
    )
    boot.add_argument("--firmware", type=Firmware, choices=list(Firmware),
                      default=Firmware.UEFI, help="uefi (OVMF) or bios (SeaBIOS); default uefi")
    boot.add_argument("--ramdisk", type=Path, metavar="DIR",
                      help="a `kiln initramfs build --out DIR` result: DIR/vmlinuz and "
                           "DIR/initrd.zst")
    boot.add_argument("--kernel", type=Path, help="the kernel (bzImage), instead of --ramdisk")
    boot.add_argument("--initrd", type=Path, help="the initramfs, instead of --ramdisk")
    boot.add_argument("--append", default="", metavar="ARGS",
                      help="more kernel arguments (console=ttyS0 is always given)")
    boot.add_argument("--pxe", action="store_true",
                      help="boot over the network: DHCP/TFTP hand iPXE a script that fetches "
                           "kernel and initrd from an HTTP server on the host")
    boot.add_argument("--disk", type=parse_disk, action="append", default=[],
                      metavar="SIZE[:virtio|ahci|nvme]", help="add a blank disk (repeatable)")
    boot.add_argument("--memory", type=int, default=1024, metavar="MB",
                      help="memory (default 1024)")
    boot.add_argument("--cpus", type=int, default=1, help="virtual CPUs (default 1)")
    boot.add_argument("--serial", default="LAB-0001", help="SMBIOS serial number")
    boot.add_argument("--mac", default=DEFAULT_MAC, help=f"the NIC's MAC (default {DEFAULT_MAC})")
    boot.add_argument("--no-reboot", action="store_true",
                      help="end when the guest reboots (instead of booting again)")
    boot.add_argument("--keep", action="store_true",
                      help="keep the VM's work dir (console log, disks, UEFI vars)")
    boot.set_defaults(handler=_boot)

    profile = lab.add_parser(
        "profile", help="print a manufData profile for lab VMs (the body of PUT "
                        "/api/v1/profiles/NAME)",
        description="Print the JSON body that creates a manufData profile for lab VMs: variant "
                    "qemu-lab (the lab's SMBIOS, memory ± 10 %%, one primary disk, one NIC), "
                    "the image from the server's store and the Kiln kernel and ramdisk as "
                    "boot files, with sizes and sha256 computed from the files given.")
    profile.add_argument("--image", type=Path, required=True, help="the .upd pushed to the server")
    profile.add_argument("--image-id", required=True,
                         help="its id on the server (what `kiln image push` printed)")
    profile.add_argument("--ramdisk", type=Path, required=True, metavar="DIR",
                         help="the ramdisk build stored as files/vmlinuz and files/initrd.zst")
    profile.add_argument("--memory", type=int, default=1024, metavar="MB",
                         help="the unit's memory (default 1024)")
    profile.add_argument("--disk-min", type=_size, default="3G", metavar="SIZE",
                         help="the primary disk's smallest size (default 3G)")
    profile.add_argument("--disk-max", type=_size, default="5G", metavar="SIZE",
                         help="its largest size (default 5G)")
    profile.add_argument("--recovery", type=_size, default="512M", metavar="SIZE",
                         help="RECOVERY's size (default 512M)")
    profile.set_defaults(handler=_profile)

    demo = lab.add_parser(
        "demo", help="one unit's life: PXE manufacture, the first restore, a normal boot",
        description="Start `kiln server` on SQLite in a scratch directory, build a small "
                    "signed demo OS and the Kiln ramdisk (reused when its inputs have not "
                    "changed), make a factory profile, then boot one VM at a time on the same "
                    "disk: PXE through manufacture, the first factory restore, a normal boot "
                    "into the demo OS. Shows each step as it happens and a summary checked "
                    "against the server's unit record. A failure names its step and keeps "
                    "the scratch directory with the console logs.")
    demo.add_argument("--firmware", type=Firmware, choices=list(Firmware),
                      default=Firmware.BIOS, help="bios (SeaBIOS, the default) or uefi (OVMF)")
    demo.add_argument("--cache", type=Path, default=None, metavar="DIR",
                      help="where the demo's signing key and ramdisk stay between runs "
                           "(default ~/.cache/kiln/demo)")
    demo.add_argument("--key", type=Path, default=None, metavar="KEY",
                      help="sign with this private key (KEY.pub beside it) instead of the "
                           "cache's demo.key")
    demo.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                      help="the scratch directory (default: a new one under /tmp)")
    demo.add_argument("--serial", default="KILN-DEMO-0001", type=_serial,
                      help="the unit's serial number (default KILN-DEMO-0001)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the scratch directory after a success too")
    demo.add_argument("--stay", action="store_true",
                      help="after a success, keep the server up (the unit's record in the web "
                           "UI) until Ctrl-C")
    demo.set_defaults(handler=_demo)


def _serial(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}", text):
        raise argparse.ArgumentTypeError(f"serial {text!r}: letters, digits and '-'")
    return text


def _demo(arguments: argparse.Namespace) -> int:
    from lab.demo import DemoOptions, default_cache, run_demo  # noqa: PLC0415 - requests

    return run_demo(DemoOptions(
        cache=arguments.cache or default_cache(), scratch=arguments.scratch,
        key=arguments.key, firmware=arguments.firmware, serial=arguments.serial,
        keep=arguments.keep, stay=arguments.stay))


def _profile(arguments: argparse.Namespace) -> int:
    ramdisk: Path = arguments.ramdisk
    files = (arguments.image, ramdisk / "vmlinuz", ramdisk / "initrd.zst")
    for file in files:
        if not file.is_file():
            print(f"kiln lab profile: {file} is not a file", file=sys.stderr)
            return 2
    unit = LabUnit(memory_bytes=arguments.memory * 1024 * 1024,
                   disk_min_bytes=arguments.disk_min, disk_max_bytes=arguments.disk_max,
                   recovery_bytes=arguments.recovery)
    document = lab_manufdata(image=files[0], image_id=arguments.image_id, kernel=files[1],
                             initrd=files[2], unit=unit)
    print(json.dumps({"manufdata": document}, indent=2))
    return 0


def _boot(arguments: argparse.Namespace) -> int:
    keep: bool = arguments.keep
    lab = Lab.detect(keep=keep or None)
    if arguments.ramdisk is not None:
        arguments.kernel = arguments.kernel or arguments.ramdisk / "vmlinuz"
        arguments.initrd = arguments.initrd or arguments.ramdisk / "initrd.zst"
    if arguments.kernel is None or arguments.initrd is None:
        print("kiln lab boot: give --ramdisk DIR, or --kernel and --initrd", file=sys.stderr)
        return 2
    for file in (arguments.kernel, arguments.initrd):
        if not file.is_file():
            print(f"kiln lab boot: {file} is not a file", file=sys.stderr)
            return 2
    with contextlib.ExitStack() as stack:
        if arguments.pxe:
            pxe_dir = Path(tempfile.mkdtemp(prefix="kiln-lab-pxe-"))
            if not lab.keep:
                stack.callback(shutil.rmtree, pxe_dir, ignore_errors=True)
            boot: BootDevice | DirectKernel = BootDevice.NETWORK
            nic = _serve_pxe(arguments, pxe_dir, stack)
        else:
            append = " ".join(filter(None, ["console=ttyS0", arguments.append]))
            boot = DirectKernel(kernel=arguments.kernel, initrd=arguments.initrd, append=append)
            nic = Nic(mac=arguments.mac)
        spec = VmSpec(
            firmware=arguments.firmware, boot=boot, disks=tuple(arguments.disk), nics=(nic,),
            smbios=Smbios(serial=arguments.serial), memory_mb=arguments.memory,
            cpus=arguments.cpus, no_reboot=arguments.no_reboot,
        )
        vm = stack.enter_context(lab.vm(spec))
        print(f"kiln lab: {spec.firmware.value} VM {spec.smbios.serial} running under "
              f"{lab.accel.value.upper()} (pid {vm.pid}, work dir {vm.work_dir}); "
              "Ctrl-C ends it", file=sys.stderr, flush=True)
        status = vm.follow()
        print(f"\nkiln lab: QEMU exited (status {status})", file=sys.stderr)
        if status != 0:
            print(vm.qemu_stderr().rstrip(), file=sys.stderr)
    return 0 if status == 0 else 1


def _serve_pxe(
    arguments: argparse.Namespace, pxe_dir: Path, stack: contextlib.ExitStack[bool | None]
) -> Nic:
    www, tftp = pxe_dir / "www", pxe_dir / "tftp"
    www.mkdir()
    http = stack.enter_context(HttpServer(www))
    initrd_name = arguments.initrd.name
    http.publish(arguments.kernel, "vmlinuz")
    http.publish(arguments.initrd, initrd_name)
    write_ipxe_script(tftp, IpxeBoot(base_url=http.guest_url, kernel="vmlinuz",
                                     initrd=initrd_name, cmdline=arguments.append))
    log.info("PXE: TFTP %s, HTTP %s on %s", tftp, www, http.url)
    return pxe_nic(tftp, mac=arguments.mac)
