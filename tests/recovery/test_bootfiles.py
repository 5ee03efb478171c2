"""Kiln's boot files from an image: read from the image's root, installed beside the old pair
when newer, GRUB's config (and on UEFI the NVRAM entries) switched, the old pair removed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kiln.manufdata import Firmware
from recovery.bootfiles import (
    IMAGE_BOOT_DIR,
    BootFilesError,
    BootFilesUpdate,
    BootTarget,
    CarriedBootFiles,
    InstalledBootFiles,
    boot_target,
    carried_boot_files,
    install_boot_files,
    installed_boot_files,
    is_newer,
)
from recovery.bootsetup import grub_config
from recovery.layout import RecoveryLayout, StateFile
from recovery.partitions import PartitionRole
from recovery.restore import save_disks
from recovery.uefi_entries import read_boot_entries, read_boot_order
from tests.recovery.loopdisk import plan_for
from tests.recovery.test_uefi_entries import CONSOLE, ESP, Fake

FS_UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def carry(root: Path, version: str, *, kernel: bytes = b"kernel", initrd: bytes = b"initrd",
          claimed_initrd: bytes | None = None) -> Path:
    """An extracted image's root carrying a boot pair of `version`."""
    directory = root / IMAGE_BOOT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vmlinuz").write_bytes(kernel + version.encode())
    (directory / "initrd.zst").write_bytes(initrd + version.encode())
    claimed = (claimed_initrd or initrd) + version.encode()
    (directory / "boot.json").write_text(json.dumps({
        "schema": 1, "version": version, "kernel": "vmlinuz", "initrd": "initrd.zst",
        "kernel_sha256": hashlib.sha256(kernel + version.encode()).hexdigest(),
        "initrd_sha256": hashlib.sha256(claimed).hexdigest()}))
    return root


def factory_boot(directory: Path, config: Path, on_volume: str) -> None:
    """What manufacture left: vmlinuz and initrd.zst, and GRUB's config naming them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vmlinuz").write_bytes(b"factory kernel")
    (directory / "initrd.zst").write_bytes(b"factory initrd")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(grub_config(fs_uuid=FS_UUID, kernel=f"{on_volume}/vmlinuz",
                                  initrd=f"{on_volume}/initrd.zst", console_args=CONSOLE))


def bios_target(recovery: Path) -> BootTarget:
    target = BootTarget(firmware=Firmware.BIOS, directory=recovery / "boot", on_volume="/boot",
                        config=recovery / "boot/grub/grub.cfg", fs_uuid=FS_UUID, esp=None)
    factory_boot(target.directory, target.config, target.on_volume)
    return target


def test_an_image_without_boot_files_carries_none_and_a_bad_boot_json_says_what(
        tmp_path: Path) -> None:
    assert carried_boot_files(tmp_path) is None
    root = carry(tmp_path, "2.0.0")
    found = carried_boot_files(root)
    assert found is not None and found.version == "2.0.0"
    assert found.names() == (f"vmlinuz-2.0.0-{found.kernel_sha256[:8]}",
                             f"initrd-2.0.0-{found.initrd_sha256[:8]}.zst")
    (root / IMAGE_BOOT_DIR / "boot.json").write_text(json.dumps({
        "schema": 1, "version": "2.0-beta", "kernel": "../vmlinuz", "initrd": "initrd.zst",
        "kernel_sha256": "x", "initrd_sha256": "0" * 64}))
    with pytest.raises(BootFilesError) as raised:
        carried_boot_files(root)
    message = str(raised.value)
    for problem in ("version '2.0-beta' is not dotted numbers",
                    "kernel '../vmlinuz' is not a file beside it",
                    "kernel_sha256 'x' is not a sha256"):
        assert problem in message, message


@pytest.mark.parametrize(("installed", "carried", "newer"), [
    (None, "0.1", True), ("1.9.0", "1.10.0", True), ("2.0.0", "2.0.0", False),
    ("2.0.1", "2.0.0", False)])
def test_only_a_newer_version_replaces_the_installed_one(installed: str | None, carried: str,
                                                         newer: bool) -> None:
    files = CarriedBootFiles(version=carried, kernel=Path("k"), initrd=Path("i"),
                             kernel_sha256="0" * 64, initrd_sha256="1" * 64)
    assert is_newer(files, InstalledBootFiles(version=installed, kernel="k",
                                              initrd="i")) is newer


def test_bios_the_new_pair_goes_beside_the_old_grub_switches_then_the_old_pair_goes(
        tmp_path: Path) -> None:
    layout = RecoveryLayout(tmp_path / "rec")
    layout.state.mkdir(parents=True)
    target = bios_target(layout.root)
    carried = carried_boot_files(carry(tmp_path / "image", "2.0.0"))
    assert carried is not None
    assert installed_boot_files(layout).version is None  # the factory's, of unknown version

    done = install_boot_files(carried, target=target, layout=layout, console_args=CONSOLE,
                              efivars=None)
    kernel, initrd = carried.names()
    assert (done.kernel, done.initrd, done.version) == (kernel, initrd, "2.0.0")
    assert sorted(p.name for p in target.directory.iterdir() if p.is_file()) == [initrd, kernel]
    assert (target.directory / kernel).read_bytes() == b"kernel2.0.0"
    config = target.config.read_text()
    assert f"linux /boot/{kernel} console=tty0" in config and f"initrd /boot/{initrd}" in config
    assert "/boot/vmlinuz " not in config
    assert installed_boot_files(layout) == done
    record = json.loads(layout.state_file(StateFile.BOOT_FILES).read_text())
    assert record == {"version": "2.0.0", "kernel": kernel, "initrd": initrd}


def test_a_pair_that_does_not_match_its_boot_json_switches_nothing(tmp_path: Path) -> None:
    layout = RecoveryLayout(tmp_path / "rec")
    layout.state.mkdir(parents=True)
    target = bios_target(layout.root)
    before = target.config.read_text()
    carried = carried_boot_files(carry(tmp_path / "image", "2.0.0", claimed_initrd=b"other"))
    assert carried is not None
    with pytest.raises(BootFilesError, match=r"initrd\.zst has sha256 [0-9a-f]{64}, boot\.json "
                                             r"says [0-9a-f]{64}"):
        install_boot_files(carried, target=target, layout=layout, console_args=CONSOLE,
                           efivars=None)
    assert target.config.read_text() == before
    assert sorted(p.name for p in target.directory.iterdir() if p.is_file()) == [
        "initrd.zst", "vmlinuz"]
    assert not layout.state_file(StateFile.BOOT_FILES).exists()


@pytest.mark.allow_commands("efibootmgr")
def test_uefi_the_nvram_entries_follow_the_new_pair(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    fake.ensure()  # manufacture's entries for \kiln\vmlinuz
    fake.calls()
    layout = RecoveryLayout(tmp_path / "rec")
    layout.state.mkdir(parents=True)
    esp = tmp_path / "esp"
    target = BootTarget(firmware=Firmware.UEFI, directory=esp / "kiln", on_volume="/kiln",
                        config=esp / "boot/grub/grub.cfg", fs_uuid=FS_UUID, esp=ESP)
    factory_boot(target.directory, target.config, target.on_volume)
    carried = carried_boot_files(carry(tmp_path / "image", "3.1"))
    assert carried is not None
    install_boot_files(carried, target=target, layout=layout, console_args=CONSOLE,
                       efivars=fake.efivars, efibootmgr=str(fake.program))
    kernel, initrd = carried.names()
    entries = read_boot_entries(fake.efivars)
    assert sorted(e.description for e in entries) == [
        "Kiln", "Kiln data erase", "Kiln factory restore"]
    for entry in entries:
        assert entry.file_path == f"\\kiln\\{kernel}", entry
        assert entry.options is not None and entry.options.startswith(
            f"initrd=\\kiln\\{initrd} console=tty0"), entry
    normal = next(e for e in entries if e.description == "Kiln")
    assert read_boot_order(fake.efivars)[0] == normal.number
    assert f"linux /kiln/{kernel} " in target.config.read_text()


def test_the_restore_step_installs_once_and_never_downgrades(tmp_path: Path) -> None:
    layout = RecoveryLayout(tmp_path / "rec")
    layout.state.mkdir(parents=True)
    plan = plan_for(Path("/dev/vda"), Firmware.BIOS)
    save_disks(layout, (plan,))
    target = boot_target((plan,), recovery=layout.root, esp_mount=tmp_path / "esp")
    recovery = plan.partition(PartitionRole.RECOVERY)
    assert recovery is not None and target.fs_uuid == recovery.filesystem_uuid
    factory_boot(target.directory, target.config, target.on_volume)
    step = BootFilesUpdate(layout=layout, plans=(plan,), esp_mount=tmp_path / "esp",
                           console_args=CONSOLE, efivars=None)
    assert step(tmp_path / "no-boot-files") is None
    done = step(carry(tmp_path / "v2", "2.0.0"))
    assert done is not None and done.startswith("Kiln boot files from the factory → 2.0.0 ("), done
    assert step(carry(tmp_path / "again", "2.0.0")) is None
    assert step(carry(tmp_path / "older", "1.5.0")) is None
    assert installed_boot_files(layout).version == "2.0.0"
    done = step(carry(tmp_path / "v3", "2.1.0"))
    assert done is not None and done.startswith("Kiln boot files 2.0.0 → 2.1.0 ("), done
    assert len([p for p in target.directory.iterdir() if p.is_file()]) == 2
