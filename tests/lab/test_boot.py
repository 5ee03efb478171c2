"""Real VMs: direct kernel boots, PXE on SeaBIOS and OVMF, disks, QMP, power cuts, errors.

Boots are shared where they can be (each costs 4-20 s under TCG)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from kiln.cli import main
from lab import (
    Accel,
    BootDevice,
    ConsoleTimeout,
    DirectKernel,
    Disk,
    DiskInterface,
    Firmware,
    HttpServer,
    IpxeBoot,
    Lab,
    LabError,
    Smbios,
    VmExited,
    VmSpec,
    pxe_nic,
    write_ipxe_script,
)
from lab.accel import kvm_boots, kvm_unusable_reason
from lab.efivars import boot_config
from tests.lab.guest import MARKER, GuestFiles

pytestmark = [pytest.mark.qemu, pytest.mark.allow_commands("qemu-system-x86_64", "qemu-img")]


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_direct_boot_disks_identity_qmp_reset_and_power_cut(
    lab: Lab, guest: GuestFiles, tmp_path: Path
) -> None:
    raw = tmp_path / "caller.img"
    with raw.open("wb") as handle:
        handle.truncate(64 << 20)
    spec = VmSpec(
        boot=DirectKernel(kernel=guest.vmlinux, initrd=guest.initrd,
                          append="console=ttyS0 lab.hold=1 lab.wait=vda,vdb,sda,nvme0n1"),
        disks=(Disk(size=1 << 30), Disk(size=1 << 30, interface=DiskInterface.AHCI),
               Disk(size=1 << 30, interface=DiskInterface.NVME), Disk(image=raw)),
        smbios=Smbios(serial="LAB-DIRECT-7", product="Kiln Test"),
    )
    started = time.monotonic()
    with lab.vm(spec) as vm:
        work = vm.work_dir
        assert "format=raw" in " ".join(vm.argv)
        match = vm.wait_for(MARKER, timeout=60)
        print(f"direct kernel boot: marker after {time.monotonic() - started:.1f} s")
        assert match["serial"] == "LAB-DIRECT-7"
        assert set(match["disks"].strip(",").split(",")) == {"vda", "vdb", "sda", "nvme0n1"}

        assert vm.status() == "running"
        with pytest.raises(ConsoleTimeout) as timeout:
            vm.wait_for("never printed", timeout=0.5)
        assert "LAB-INIT-OK serial=LAB-DIRECT-7" in str(timeout.value)

        vm.system_reset()
        vm.qmp.wait_event("RESET", timeout=10)
        assert vm.wait_for(MARKER, timeout=60)["serial"] == "LAB-DIRECT-7"
        assert vm.console_text().count("LAB-INIT-OK") == 2

        pid = vm.pid
        vm.power_cut()
        assert gone(pid)
        assert vm.exit_status == -9
        assert not vm.running
    assert not work.exists()
    assert raw.exists() and raw.stat().st_size == 64 << 20  # the caller's image stays


def test_a_work_dir_too_deep_for_a_unix_socket_puts_the_sockets_elsewhere(
        guest: GuestFiles, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    lab = Lab.detect(base_dir=deep)
    spec = VmSpec(boot=DirectKernel(kernel=guest.vmlinux, initrd=guest.initrd,
                                    append="console=ttyS0 lab.hold=1"))
    with lab.vm(spec) as vm:
        sockets = vm.files.qmp.parent
        assert sockets != vm.work_dir and vm.files.console_socket == sockets / "console.sock"
        assert vm.wait_for(MARKER, timeout=60)
        assert vm.status() == "running"  # QMP through the short path
        work = vm.work_dir
    assert not work.exists() and not sockets.exists()


@pytest.mark.parametrize("firmware", [Firmware.BIOS, Firmware.UEFI])
def test_pxe_boot_over_ipxe_and_http(
    firmware: Firmware, lab: Lab, guest: GuestFiles, tmp_path: Path
) -> None:
    www, tftp = tmp_path / "www", tmp_path / "tftp"
    www.mkdir()
    shutil.copyfile(guest.vmlinuz, www / "vmlinuz")
    shutil.copyfile(guest.initrd, www / "initrd.gz")
    efi_vars = tmp_path / "unit.vars" if firmware is Firmware.UEFI else None
    with HttpServer(www) as http:
        write_ipxe_script(tftp, IpxeBoot(base_url=http.guest_url, initrd="initrd.gz",
                                         cmdline="lab.wait=vda"))
        spec = VmSpec(firmware=firmware, boot=BootDevice.NETWORK,
                      nics=(pxe_nic(tftp, mac="52:54:00:aa:bb:01"),), disks=(Disk(size=1 << 30),),
                      smbios=Smbios(serial=f"LAB-PXE-{firmware.value}"), efi_vars=efi_vars)
        started = time.monotonic()
        with lab.vm(spec) as vm:
            vm.wait_for(r"Linux version", timeout=120)
            kernel_at = time.monotonic() - started
            match = vm.wait_for(MARKER, timeout=60)
            print(f"PXE {firmware.value}: kernel after {kernel_at:.1f} s, marker after "
                  f"{time.monotonic() - started:.1f} s")
            assert match["serial"] == f"LAB-PXE-{firmware.value}"
            assert match["disks"] == "vda,"
            # The guest powers off next: waiting for more ends with the console's tail.
            with pytest.raises(VmExited) as exited:
                vm.wait_for("never printed", timeout=60)
            assert "QEMU exited (status 0)" in str(exited.value)
            assert "LAB-INIT-OK" in str(exited.value)
        assert http.requests == ["/vmlinuz", "/initrd.gz"]
    if efi_vars is not None:  # the VM's variable store outlives it, with its boot entries
        entries = [e.description for e in boot_config(efi_vars).ordered()]
        assert "UEFI PXEv4 (MAC:525400AABB01)" in entries


def test_qemu_that_cannot_start_is_reported_with_its_stderr(lab: Lab) -> None:
    with lab.vm(VmSpec(extra_args=("-no-such-option",))) as vm:
        with pytest.raises(VmExited) as exited:
            vm.wait_for("anything", timeout=30)
        assert "invalid option" in str(exited.value)
        with pytest.raises(LabError, match="QEMU exited before QMP"):
            vm.status()
        pid = vm.pid
    assert gone(pid)


def test_ovmf_cannot_take_an_elf_kernel(lab: Lab, guest: GuestFiles) -> None:
    spec = VmSpec(firmware=Firmware.UEFI, boot=DirectKernel(kernel=guest.vmlinux))
    with pytest.raises(LabError, match="boots only on SeaBIOS"):
        lab.vm(spec).start()


def test_kvm_probe_rejects_this_host() -> None:
    if kvm_unusable_reason() is None:
        pytest.skip("KVM may really work here")
    started = time.monotonic()
    assert kvm_boots() is False
    assert time.monotonic() - started < 10


def test_cli_boots_and_streams_the_console(
    guest: GuestFiles, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_LAB_ACCEL", Lab.detect().accel.value)
    status = main(["lab", "boot", "--firmware", "bios", "--kernel", str(guest.vmlinux),
                   "--initrd", str(guest.initrd), "--append", "quiet lab.wait=nvme0n1,sda",
                   "--disk", "64M:nvme", "--disk", "64M:ahci", "--serial", "CLI-7",
                   "--memory", "512"])
    out, err = capfd.readouterr()
    assert status == 0
    assert "LAB-INIT-OK serial=CLI-7 disks=nvme0n1,sda," in out
    assert "QEMU exited (status 0)" in err
    work = re.search(r"work dir (\S+)\)", err)
    assert work and not Path(work[1]).exists()


def test_lab_accelerator_here(lab: Lab) -> None:
    if kvm_unusable_reason() is not None and "KILN_LAB_ACCEL" not in os.environ:
        assert lab.accel is Accel.TCG
