"""A factory for the QEMU manufacture tests: a real `kiln server` with a trusted image, the
Kiln kernel and ramdisk as boot files and profile `line1`; and the ways to boot a unit
against it (PXE, or the fast `-kernel` path where the firmware is not under test) and to read
its disk afterwards from the host."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from initramfs.builder import RamdiskBuild
from kiln.image.signing import SigningKey
from kiln.process import run
from lab import Lab
from lab.diskimage import Partition, PlacedPartition, ext4_listing
from lab.httpd import HttpServer
from lab.profile import lab_manufdata
from lab.pxe import IpxeBoot, pxe_nic, write_ipxe_script
from lab.spec import BootDevice, DirectKernel, Disk, Firmware, Nic, Smbios, VmSpec
from lab.vm import Vm
from tests.server.live import LiveServer, free_port
from tests.server.signed_images import build_test_image

MIB, GIB = 1024**2, 1024**3
DISK_BYTES = 4 * GIB
RECOVERY_BYTES = 512 * MIB
FINAL = r"kiln: manufacture (succeeded|failed): ([^\r\n]*)"
QEMU_COMMANDS = ("python", "tar", "qemu-system-x86_64", "qemu-img", "sfdisk", "e2fsck",
                 "debugfs")


@dataclass(frozen=True)
class Factory:
    server: LiveServer
    token: str
    mfgurl: str  # profile line1, as the guest reaches the server
    image: Path
    image_id: str
    ramdisk: RamdiskBuild = field(repr=False)

    @property
    def port(self) -> int:
        return self.server.port

    def api(self, path: str) -> Any:
        answer = requests.get(f"{self.server.url}/api/v1/{path}", timeout=30,
                              headers={"Authorization": f"Bearer {self.token}"})
        assert answer.ok, answer.text
        return answer.json()

    def profile(self, name: str, document: dict[str, Any], *, port: int | None = None) -> str:
        """Create or replace profile NAME; return its mfgurl as the guest reaches it (through
        PORT on the host when given, e.g. a proxy's)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = requests.put(f"{self.server.url}/api/v1/profiles/{name}", headers=headers,
                              json={"manufdata": document}, timeout=30)
        assert answer.ok, answer.text
        key = requests.post(f"{self.server.url}/api/v1/profiles/{name}/line-key",
                            headers=headers, timeout=30).json()["line_key"]
        return f"http://{name}:{key}@10.0.2.2:{port or self.port}/mfg/{name}/manufData.json"


def line_key(mfgurl: str) -> str:
    return mfgurl.split("@", maxsplit=1)[0].rsplit(":", 1)[1]


def manufdata(factory_image: Path, image_id: str, ramdisk: RamdiskBuild) -> dict[str, Any]:
    """Profile line1: one 3 to 5 GiB disk, 1 GiB RAM ± 10 %, one NIC, RECOVERY 512 MiB."""
    return lab_manufdata(image=factory_image, image_id=image_id, kernel=ramdisk.kernel,
                         initrd=ramdisk.initrd)


@contextmanager
def running_factory(work: Path, *, signing_key: SigningKey, public_key: Path,
                    ramdisk: RamdiskBuild) -> Iterator[Factory]:
    image, _manifest = build_test_image(work, [signing_key])
    port = free_port()
    server = LiveServer(data_dir=work / "server", port=port,
                        extra_args=("--public-url", f"http://10.0.2.2:{port}"))
    server.trust(public_key)
    server.run()
    with server:
        _password, token = server.admin()
        image_id = server.push_image(token, image)
        for path, name in ((ramdisk.kernel, "vmlinuz"), (ramdisk.initrd, "initrd.zst")):
            server.put_file(token, name, path.read_bytes())
        factory = Factory(server, token, "", image, image_id, ramdisk)
        mfgurl = factory.profile("line1", manufdata(image, image_id, ramdisk))
        yield Factory(server, token, mfgurl, image, image_id, ramdisk)


def recovery_on_its_own_disk(document: dict[str, Any]) -> dict[str, Any]:
    """manufData for two disks: PRIMARY and DATA on a 3 to 5 GiB NVMe disk, RECOVERY (and the
    ESP) on a 1 to 2 GiB disk of its own."""
    document["variants"][0]["disks"] = [
        {"role": "primary", "transport": "nvme", "min_size_bytes": 3 * GIB,
         "max_size_bytes": 5 * GIB},
        {"role": "recovery", "min_size_bytes": GIB, "max_size_bytes": 2 * GIB}]
    document["layout"]["recovery_disk"] = "separate"
    return document


def blank_disk(path: Path, size: int = DISK_BYTES) -> Disk:
    with path.open("wb") as handle:
        handle.truncate(size)
    return Disk(image=path)


@dataclass(frozen=True)
class Verdict:
    result: str  # "succeeded" or "failed"
    line: str  # the rest of the console's final line
    console: str


def _finish(vm: Vm, work: Path, *, mfgurl: str, name: str) -> Verdict:
    verdict = vm.wait_for(FINAL, timeout=600)
    assert vm.wait_exit(timeout=120) == 0
    console = vm.console_text()
    (work / f"{name}.txt").write_text(console)  # kept with the test's tmp_path
    assert "Kernel panic" not in console
    assert "cannot unmount RECOVERY" not in console
    kiln_lines = "".join(line for line in console.splitlines() if "kiln:" in line)
    if "@" in mfgurl:
        assert line_key(mfgurl) not in kiln_lines  # the kernel echoes its command line
    return Verdict(verdict.group(1), verdict.group(2), console)


@contextmanager
def pxe_unit(lab: Lab, ramdisk: RamdiskBuild, work: Path, *, mfgurl: str, serial: str,
             disk: Path, memory_mb: int, firmware: Firmware = Firmware.BIOS) -> Iterator[Vm]:
    """Start a unit that PXE-boots the Kiln ramdisk with `mfgurl=` (iPXE from QEMU's TFTP,
    the kernel and ramdisk over HTTP). Yields the running VM."""
    (work / "http").mkdir()
    with HttpServer(work / "http") as http:
        http.publish(ramdisk.kernel, "vmlinuz")
        http.publish(ramdisk.initrd, "initrd.zst")
        write_ipxe_script(work / "tftp", IpxeBoot(base_url=http.guest_url,
                                                  cmdline=f"mfgurl={mfgurl}"))
        spec = VmSpec(firmware=firmware, boot=BootDevice.NETWORK, nics=(pxe_nic(work / "tftp"),),
                      disks=(Disk(image=disk),), memory_mb=memory_mb, no_reboot=True,
                      smbios=Smbios(serial=serial),
                      efi_vars=work / "unit.vars" if firmware is Firmware.UEFI else None)
        with lab.vm(spec) as vm:
            yield vm


def boot_unit(lab: Lab, ramdisk: RamdiskBuild, work: Path, *, mfgurl: str, serial: str,
              memory_mb: int, firmware: Firmware = Firmware.BIOS) -> tuple[Path, Verdict]:
    """PXE-boot a unit with a blank 4 GiB disk; return the disk and the verdict."""
    disk = work / "unit.img"
    blank_disk(disk)
    with pxe_unit(lab, ramdisk, work, mfgurl=mfgurl, serial=serial, disk=disk,
                  memory_mb=memory_mb, firmware=firmware) as vm:
        return disk, _finish(vm, work, mfgurl=mfgurl, name="console")


@contextmanager
def direct_unit(lab: Lab, ramdisk: RamdiskBuild, *, mfgurl: str, serial: str,
                disks: tuple[Disk, ...], memory_mb: int = 1024) -> Iterator[Vm]:
    """Start a unit on the fast path: the Kiln kernel and ramdisk straight from the host with
    `mfgurl=`, SeaBIOS, one NIC. Yields the running VM."""
    spec = VmSpec(boot=DirectKernel(kernel=ramdisk.kernel, initrd=ramdisk.initrd,
                                    append=f"console=ttyS0 mfgurl={mfgurl}"),
                  nics=(Nic(),), disks=disks, memory_mb=memory_mb, no_reboot=True,
                  smbios=Smbios(serial=serial))
    with lab.vm(spec) as vm:
        yield vm


def manufacture_direct(lab: Lab, ramdisk: RamdiskBuild, work: Path, *, mfgurl: str,
                       serial: str, disks: tuple[Disk, ...], memory_mb: int = 1024,
                       name: str = "console") -> Verdict:
    with direct_unit(lab, ramdisk, mfgurl=mfgurl, serial=serial, disks=disks,
                     memory_mb=memory_mb) as vm:
        return _finish(vm, work, mfgurl=mfgurl, name=name)


def boot_from_disk(lab: Lab, disks: tuple[Disk, ...], work: Path, *, firmware: Firmware,
                   efi_vars: Path | None = None) -> str:
    """Boot the manufactured disk(s) (no network); return the ramdisk's decision."""
    spec = VmSpec(firmware=firmware, boot=BootDevice.DISK, disks=disks,
                  memory_mb=1024, no_reboot=True, efi_vars=efi_vars)
    with lab.vm(spec) as vm:
        decision = vm.wait_for(r"kiln: decision: ([a-z]+)", timeout=300)
        (work / "disk-boot.txt").write_text(vm.console_text())
    return str(decision.group(1))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(16 * MIB):
            digest.update(block)
    return digest.hexdigest()


def partition_table(disk: Path) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(run(["sfdisk", "-J", disk], timeout=60).text)
    found: dict[str, Any] = table["partitiontable"]
    return found


def placed(table: dict[str, Any], index: int, label: str) -> PlacedPartition:
    entry = table["partitions"][index]
    return PlacedPartition(partition=Partition(label=label, size_mib=entry["size"] * 512 // MIB),
                           start=entry["start"] * 512, size=entry["size"] * 512)


def stored_images(disk: Path, rec: PlacedPartition, *, work: Path) -> list[str]:
    """The image store names images itself (product-version-build-id), not by destination."""
    return [name for name in ext4_listing(disk, rec, "/Image", work=work)
            if name.endswith(".upd")]
