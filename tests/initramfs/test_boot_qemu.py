"""The Kiln ramdisk in QEMU: PXE on both firmwares, disks via udev, every dependency
importable, the crash path, the rescue shell and a normal boot into a test root."""

from __future__ import annotations

from pathlib import Path

import pytest

from initramfs.builder import RamdiskBuild
from lab import Lab
from lab.diskimage import ext4_listing
from lab.httpd import HttpServer
from lab.pxe import IpxeBoot, pxe_nic, write_ipxe_script
from lab.spec import BootDevice, DirectKernel, Disk, DiskInterface, Firmware, Smbios, VmSpec
from tests.initramfs.conftest import TEST_ROOT_MARK, unit_disk

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.allow_commands("qemu-system-x86_64", "qemu-img", "sfdisk", "mkfs.ext4",
                               "e2fsck", "debugfs"),
]

DECISION = r"kiln: decision: (\w+) \((.*)\) at ([\d.]+) s, ([\d.]+) s after /init started"
GIB = 1024**3


def pxe_spec(tmp_path: Path, firmware: Firmware, server: HttpServer, cmdline: str,
             disks: tuple[Disk, ...] = ()) -> VmSpec:
    tftp = tmp_path / "tftp"
    write_ipxe_script(tftp, IpxeBoot(base_url=server.guest_url, cmdline=cmdline))
    return VmSpec(firmware=firmware, boot=BootDevice.NETWORK, nics=(pxe_nic(tftp),),
                  disks=disks, memory_mb=1024, no_reboot=True,
                  smbios=Smbios(serial=f"PXE-{firmware.value}"))


def serve(ramdisk: RamdiskBuild, root: Path) -> HttpServer:
    root.mkdir()
    server = HttpServer(root)
    server.publish(ramdisk.kernel, "vmlinuz")
    server.publish(ramdisk.initrd, "initrd.zst")
    return server


def test_pxe_on_seabios_finds_every_disk_and_imports_everything(
    lab: Lab, ramdisk: RamdiskBuild, tmp_path: Path
) -> None:
    disks = (Disk(size=GIB, interface=DiskInterface.VIRTIO),
             Disk(size=2 * GIB, interface=DiskInterface.AHCI),
             Disk(size=3 * GIB, interface=DiskInterface.NVME, serial="KILN-NVME-1"))
    with serve(ramdisk, tmp_path / "http") as server, lab.vm(pxe_spec(
        tmp_path, Firmware.BIOS, server, "quiet kiln.debug=selftest", disks
    )) as vm:
        vm.wait_for(r"Kiln ramdisk started", timeout=120)
        listed = vm.wait_for(r"selftest: disks (.*)", timeout=120).group(1).split()
        vm.wait_for(r"selftest: PASSED", timeout=10)
        decision = vm.wait_for(DECISION, timeout=30)
        assert "/vmlinuz" in server.requests and "/initrd.zst" in server.requests
    assert sorted(d.split(":")[0] for d in listed) == ["nvme0n1", "sda", "vda"]
    sizes = {d.split(":")[0]: int(d.split(":")[2]) for d in listed}
    assert sizes == {"vda": GIB, "sda": 2 * GIB, "nvme0n1": 3 * GIB}
    assert decision.group(1) == "restore"
    assert "no PRIMARY partition" in decision.group(2)


def test_pxe_on_ovmf_reaches_the_decision(
    lab: Lab, ramdisk: RamdiskBuild, tmp_path: Path
) -> None:
    with serve(ramdisk, tmp_path / "http") as server, lab.vm(pxe_spec(
        tmp_path, Firmware.UEFI, server, "quiet kiln.bogus=1"
    )) as vm:
        vm.wait_for(r"unknown kernel parameter 'kiln.bogus=1'", timeout=180)
        decision = vm.wait_for(DECISION, timeout=60)
        vm.wait_for(r"kiln: restore: no RECOVERY volume; rebooting", timeout=30)
        assert vm.wait_exit(timeout=60) == 0  # the reboot, which -no-reboot turns into an exit
        assert (tmp_path / "tftp" / "boot.ipxe").exists()
    assert decision.group(1) == "restore"
    assert "Kernel panic" not in vm.console_text()


def direct(ramdisk: RamdiskBuild, append: str, disks: tuple[Disk, ...] = ()) -> VmSpec:
    return VmSpec(boot=DirectKernel(kernel=ramdisk.kernel, initrd=ramdisk.initrd,
                                    append=f"console=ttyS0 quiet {append}"),
                  disks=disks, memory_mb=1024, no_reboot=True)


def test_an_exception_in_pid1_is_logged_and_ends_in_a_reboot(
    lab: Lab, ramdisk: RamdiskBuild
) -> None:
    with lab.vm(direct(ramdisk, "kiln.debug=raise")) as vm:
        vm.wait_for(r"Traceback \(most recent call last\)", timeout=120)
        vm.wait_for(r"InjectedFailure: kiln.debug=raise: failing on purpose", timeout=10)
        vm.wait_for(r"PID 1 failed; rebooting in", timeout=10)
        assert vm.wait_exit(timeout=60) == 0
        text = vm.console_text()
    assert "Kernel panic" not in text
    assert "Attempted to kill init" not in text


def test_normal_boot_switches_to_the_root_filesystems_init_and_logs_to_recovery(
    lab: Lab, ramdisk: RamdiskBuild, tmp_path: Path
) -> None:
    disk = unit_disk(tmp_path, flag=True)
    with lab.vm(direct(ramdisk, "", (Disk(image=disk.image),))) as vm:
        decision = vm.wait_for(DECISION, timeout=120)
        mark = vm.wait_for(TEST_ROOT_MARK + r" (\d+)", timeout=60)
        vm.wait_exit(timeout=60)
    assert decision.group(1) == "normal"
    assert mark.group(1) == "1", "the root's init runs as PID 1"
    logs = ext4_listing(disk.image, disk.recovery, "/log", work=tmp_path)
    assert len(logs) == 1
    assert logs[0].endswith(".log")


def test_without_the_flag_file_a_restore_is_decided(
    lab: Lab, ramdisk: RamdiskBuild, tmp_path: Path
) -> None:
    disk = unit_disk(tmp_path, flag=False)
    with lab.vm(direct(ramdisk, "", (Disk(image=disk.image),))) as vm:
        decision = vm.wait_for(DECISION, timeout=120)
    assert decision.group(1) == "restore"
    assert "PRIMARY has no /boot.normal" in decision.group(2)


def test_shell_mode_gives_a_shell_on_the_serial_console(
    lab: Lab, ramdisk: RamdiskBuild
) -> None:
    with lab.vm(direct(ramdisk, "kiln.mode=shell")) as vm:
        vm.wait_for(r"starting a shell on /dev/ttyS0", timeout=120)
        vm.wait_for(r"kiln# ", timeout=30)
        vm.type("echo shell-$((6 * 7)); python3 -c 'import kiln, parted; print(\"py-ok\")'\n")
        vm.wait_for(r"shell-42", timeout=30)
        vm.wait_for(r"py-ok", timeout=60)
        vm.type("exit\n")
        assert vm.wait_exit(timeout=60) == 0  # leaving the shell reboots
