"""Manufacture end to end in QEMU: the real ramdisk PXE-boots with `mfgurl=` pointing at a
real `kiln server`, validates the VM's hardware, partitions its disk, fills RECOVERY, sets up
booting and reports; the unit then boots its own disk into the Kiln ramdisk, which restores
(PRIMARY was wiped). A unit that does not match its variant fails without a byte written to
its disk."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from initramfs.builder import RamdiskBuild
from kiln.image.signing import SigningKey
from kiln.process import run
from lab import Lab
from lab.diskimage import Partition, PlacedPartition, ext4_listing, ext4_read
from lab.httpd import HttpServer
from lab.pxe import IpxeBoot, pxe_nic, write_ipxe_script
from lab.spec import DEFAULT_MAC, BootDevice, Disk, Firmware, Smbios, VmSpec
from tests.server.live import LiveServer, free_port
from tests.server.signed_images import build_test_image

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.allow_commands("python", "tar", "qemu-system-x86_64", "qemu-img", "sfdisk",
                               "e2fsck", "debugfs"),
]

MIB, GIB = 1024**2, 1024**3
DISK_BYTES = 4 * GIB
RECOVERY_BYTES = 512 * MIB
FINAL = r"kiln: manufacture (succeeded|failed): ([^\r\n]*)"


@dataclass(frozen=True)
class Factory:
    server: LiveServer
    token: str
    mfgurl: str  # as the guest reaches the server
    image: Path
    image_id: str

    @property
    def line_key(self) -> str:
        return self.mfgurl.split("@")[0].rsplit(":", 1)[1]

    def api(self, path: str) -> Any:
        answer = requests.get(f"{self.server.url}/api/v1/{path}", timeout=30,
                              headers={"Authorization": f"Bearer {self.token}"})
        assert answer.ok, answer.text
        return answer.json()


def _boot_file(path: Path, name: str, kind: str) -> dict[str, Any]:
    data = path.read_bytes()
    return {"url": f"files/{name}", "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data), "destination": f"boot/{name}", "kind": kind}


def manufdata(image: Path, image_id: str, ramdisk: RamdiskBuild) -> dict[str, Any]:
    data = image.read_bytes()
    return {
        "schema": 1, "product": "demo",
        "files": [{"url": f"images/{image_id}.upd", "sha256": hashlib.sha256(data).hexdigest(),
                   "size_bytes": len(data), "destination": "Image/demo-1.0.0.upd",
                   "kind": "image"},
                  _boot_file(ramdisk.kernel, "vmlinuz", "kernel"),
                  _boot_file(ramdisk.initrd, "initrd.zst", "initrd")],
        "variants": [{
            "name": "qemu-lab",
            "dmi": {"sys_vendor": "Kiln Lab", "product_name": "Lab Appliance"},
            "memory": {"size_bytes": GIB, "tolerance_percent": 10},
            "disks": [{"role": "primary", "min_size_bytes": 3 * GIB,
                       "max_size_bytes": 5 * GIB}],
            "nics": {"count": 1},
        }],
        "layout": {"firmware": "auto", "recovery_size_bytes": RECOVERY_BYTES},
    }


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey,
            signing_dir: Path, ramdisk: RamdiskBuild) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("factory")
    image, _manifest = build_test_image(work, [signing_key])
    port = free_port()
    server = LiveServer(data_dir=work / "server", port=port,
                        extra_args=("--public-url", f"http://10.0.2.2:{port}"))
    server.trust(signing_dir / "test.pub")
    server.run()
    with server:
        _password, token = server.admin()
        headers = {"Authorization": f"Bearer {token}"}
        image_id = server.push_image(token, image)
        for path, name in ((ramdisk.kernel, "vmlinuz"), (ramdisk.initrd, "initrd.zst")):
            server.put_file(token, name, path.read_bytes())
        answer = requests.put(f"{server.url}/api/v1/profiles/line1", headers=headers,
                              json={"manufdata": manufdata(image, image_id, ramdisk)},
                              timeout=30)
        assert answer.ok, answer.text
        key = requests.post(f"{server.url}/api/v1/profiles/line1/line-key", headers=headers,
                            timeout=30).json()["line_key"]
        mfgurl = f"http://line1:{key}@10.0.2.2:{port}/mfg/line1/manufData.json"
        yield Factory(server, token, mfgurl, image, image_id)


def boot_unit(lab: Lab, ramdisk: RamdiskBuild, work: Path, *, factory: Factory, serial: str,
              memory_mb: int, firmware: Firmware = Firmware.BIOS) -> tuple[Path, str, str]:
    """PXE-boot a unit with a blank 4 GiB disk; return the disk, the verdict and its line."""
    disk = work / "unit.img"
    with disk.open("wb") as handle:
        handle.truncate(DISK_BYTES)
    (work / "http").mkdir()
    with HttpServer(work / "http") as http:
        http.publish(ramdisk.kernel, "vmlinuz")
        http.publish(ramdisk.initrd, "initrd.zst")
        write_ipxe_script(work / "tftp", IpxeBoot(base_url=http.guest_url,
                                                  cmdline=f"mfgurl={factory.mfgurl}"))
        spec = VmSpec(firmware=firmware, boot=BootDevice.NETWORK, nics=(pxe_nic(work / "tftp"),),
                      disks=(Disk(image=disk),), memory_mb=memory_mb, no_reboot=True,
                      smbios=Smbios(serial=serial),
                      efi_vars=work / "unit.vars" if firmware is Firmware.UEFI else None)
        with lab.vm(spec) as vm:
            verdict = vm.wait_for(FINAL, timeout=600)
            assert vm.wait_exit(timeout=120) == 0
            console = vm.console_text()
            (work / "console.txt").write_text(console)  # kept with the test's tmp_path
    assert "Kernel panic" not in console
    assert "cannot unmount RECOVERY" not in console
    kiln_lines = "".join(line for line in console.splitlines() if "kiln:" in line)
    assert factory.line_key not in kiln_lines  # the kernel echoes its command line; Kiln not
    return disk, verdict.group(1), verdict.group(2)


def boot_from_disk(lab: Lab, disk: Path, work: Path, *, firmware: Firmware,
                   efi_vars: Path | None = None) -> str:
    """Boot the manufactured disk (no network) and return the ramdisk's decision line."""
    spec = VmSpec(firmware=firmware, boot=BootDevice.DISK, disks=(Disk(image=disk),),
                  memory_mb=1024, no_reboot=True, efi_vars=efi_vars)
    with lab.vm(spec) as vm:
        decision = vm.wait_for(r"kiln: decision: ([a-z]+)", timeout=300)
        (work / "disk-boot.txt").write_text(vm.console_text())
    return decision.group(1)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(16 * MIB):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_blank(path: Path) -> str:
    """The hash of a blank disk as `boot_unit` makes it."""
    with path.open("wb") as handle:
        handle.truncate(DISK_BYTES)
    try:
        return sha256_of(path)
    finally:
        path.unlink()


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


def test_a_unit_is_manufactured_on_seabios(lab: Lab, ramdisk: RamdiskBuild, factory: Factory,
                                           tmp_path: Path) -> None:
    serial = "KILN-QEMU-0001"
    disk, verdict, line = boot_unit(lab, ramdisk, tmp_path, factory=factory, serial=serial,
                                    memory_mb=1024)
    assert verdict == "succeeded", line

    unit = factory.api(f"units/{serial}")
    assert (unit["lifecycle"], unit["status"]) == ("manufacture", "succeeded")
    assert unit["variant"] == "qemu-lab" and unit["profile"] == "line1"
    assert unit["macs"] == [DEFAULT_MAC]
    assert unit["dmi"]["product_serial"] == serial
    assert unit["dmi"]["sys_vendor"] == "Kiln Lab"
    assert unit["credential_escrowed"]
    events = factory.api(f"units/{serial}/events")["events"]
    finished = {e["name"]: e["result"] for e in events if e["type"] == "finish"}
    for stage in ("manufacture", "manufacture/validate", "manufacture/credentials",
                  "manufacture/partition", "manufacture/mount", "manufacture/recovery",
                  "manufacture/recovery/Image/demo-1.0.0.upd", "manufacture/keys",
                  "manufacture/state", "manufacture/secrets", "manufacture/wipe"):
        assert finished.get(stage) == "success", (stage, finished)
    assert finished["manufacture/boot"] == "success"
    report = factory.api(f"units/{serial}/qa-report")
    assert report["result"] == "pass" and report["serial"] == serial
    assert report["hardware"]["memory_bytes"] > 0

    table = partition_table(disk)
    assert table["label"] == "dos"  # SeaBIOS: MBR
    recovery, primary = table["partitions"]
    assert (recovery["start"], recovery["size"]) == (2048, RECOVERY_BYTES // 512)
    assert recovery.get("bootable") is True
    assert primary["start"] == 2048 + RECOVERY_BYTES // 512
    rec = placed(table, 0, "RECOVERY")
    work = tmp_path / "check"
    work.mkdir()
    [stored] = stored_images(disk, rec, work=work)
    assert ext4_read(disk, rec, f"/Image/{stored}", work=work) == factory.image.read_bytes()
    identity = json.loads(ext4_read(disk, rec, "/state/identity.json", work=work))
    assert identity["serial"] == serial and identity["variant"] == "qemu-lab"
    assert "test.pub" in ext4_listing(disk, rec, "/keys", work=work)
    state = ext4_listing(disk, rec, "/state", work=work)
    assert {"admin-password.sha512crypt", "device-token", "factory.json"} <= set(state)
    logs = ext4_listing(disk, rec, "/log", work=work)
    assert any(name.startswith("events-") for name in logs)
    [run_log] = [name for name in logs if name.endswith(".log")]
    text = ext4_read(disk, rec, f"/log/{run_log}", work=work).decode()
    assert "manufacture: wipe done" in text
    assert factory.line_key not in text
    with disk.open("rb") as handle:  # PRIMARY's start is wiped: the next boot restores
        handle.seek(primary["start"] * 512)
        assert handle.read(MIB) == bytes(MIB)
    assert ext4_read(disk, rec, "/boot/vmlinuz", work=work) == ramdisk.kernel.read_bytes()
    grub = ext4_read(disk, rec, "/boot/grub/grub.cfg", work=work).decode()
    assert grub.count("menuentry") == 3 and "kiln.mode=erase" in grub
    # The unit boots its own disk: SeaBIOS → the MBR → GRUB → the Kiln ramdisk → restore.
    assert boot_from_disk(lab, disk, tmp_path, firmware=Firmware.BIOS) == "restore"


def test_a_unit_with_too_little_memory_fails_and_its_disk_is_untouched(
        lab: Lab, ramdisk: RamdiskBuild, factory: Factory, tmp_path: Path) -> None:
    serial = "KILN-QEMU-0002"
    blank = sha256_of_blank(tmp_path / "blank.img")
    disk, verdict, line = boot_unit(lab, ramdisk, tmp_path, factory=factory, serial=serial,
                                    memory_mb=768)
    assert verdict == "failed", line
    assert "memory" in line
    unit = factory.api(f"units/{serial}")
    assert (unit["lifecycle"], unit["status"]) == ("manufacture", "failed")
    assert "memory: expected" in unit["failure"]
    events = factory.api(f"units/{serial}/events")["events"]
    finished = {e["name"]: e for e in events if e["type"] == "finish"}
    assert finished["manufacture/validate"]["result"] == "fail"
    assert "memory" in finished["manufacture/validate"]["message"]
    assert "manufacture/partition" not in {e["name"] for e in events}
    assert sha256_of(disk) == blank


def test_a_unit_is_manufactured_on_ovmf(lab: Lab, ramdisk: RamdiskBuild, factory: Factory,
                                        tmp_path: Path) -> None:
    serial = "KILN-QEMU-0003"
    disk, verdict, line = boot_unit(lab, ramdisk, tmp_path, factory=factory, serial=serial,
                                    memory_mb=1024, firmware=Firmware.UEFI)
    assert verdict == "succeeded", line
    unit = factory.api(f"units/{serial}")
    assert (unit["lifecycle"], unit["status"]) == ("manufacture", "succeeded")
    table = partition_table(disk)
    assert table["label"] == "gpt"  # UEFI: GPT with the ESP first
    esp, recovery, _primary = table["partitions"]
    assert esp["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert recovery["size"] == RECOVERY_BYTES // 512
    work = tmp_path / "check"
    work.mkdir()
    rec = placed(table, 1, "RECOVERY")
    assert len(stored_images(disk, rec, work=work)) == 1
    assert "identity.json" in ext4_listing(disk, rec, "/state", work=work)
    events = factory.api(f"units/{serial}/events")["events"]
    boot = [e for e in events if e["type"] == "finish" and e["name"] == "manufacture/boot"]
    assert boot[0]["result"] == "success" and "3 Kiln NVRAM entries" in boot[0]["message"]
    # The same variable store: the firmware follows Kiln's NVRAM entry to the ramdisk.
    assert boot_from_disk(lab, disk, tmp_path, firmware=Firmware.UEFI,
                          efi_vars=tmp_path / "unit.vars") == "restore"
