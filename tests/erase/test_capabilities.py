from __future__ import annotations

from pathlib import Path

import pytest

from erase.capabilities import (
    AtaIdentity,
    CapabilityError,
    Method,
    NvmeIdentity,
    Scope,
    ata_identify_path,
    ata_words,
    detect,
    nvme_controller,
)
from kiln.blockdev import Disk, DiskTransport


def _words(**bits: tuple[int, ...]) -> tuple[int, ...]:
    """256 IDENTIFY words with the given bits set, e.g. w128=(0, 5)."""
    words = [0] * 256
    for key, numbers in bits.items():
        for number in numbers:
            words[int(key[1:])] |= 1 << number
    return tuple(words)


def _sysfs_text(words: tuple[int, ...]) -> str:
    return "\n".join(" ".join(f"{w:04x}" for w in words[i:i + 8]) for i in range(0, 256, 8))


def _disk(name: str, transport: DiskTransport, sysfs_path: str = "") -> Disk:
    return Disk(name=name, path=f"/dev/{name}", sysfs_path=sysfs_path, size_bytes=1 << 30,
                model="M", vendor="V", serial="S1", transport=transport, rotational=False,
                removable=False, read_only=False)


def _block(root: Path, name: str, *, discard: int) -> None:
    queue = root / "sys/block" / name / "queue"
    queue.mkdir(parents=True)
    (queue / "discard_max_bytes").write_text(f"{discard}\n")
    (queue / "logical_block_size").write_text("512\n")


def test_ata_words_round_trip_and_bits() -> None:
    words = _words(w59=(12, 13, 15), w82=(1,), w128=(0, 3, 5), w169=(0,))
    ata = AtaIdentity.from_words(ata_words(_sysfs_text(words)))
    assert (ata.sanitize_crypto, ata.sanitize_block, ata.sanitize_overwrite) == (
        True, True, False)
    assert (ata.security, ata.security_frozen, ata.enhanced_erase, ata.trim) == (
        True, True, True, True)
    with pytest.raises(CapabilityError, match="unreadable ATA IDENTIFY"):
        ata_words("00zz 0000")
    with pytest.raises(CapabilityError, match="has 3 words"):
        AtaIdentity.from_words((0, 0, 0))


def test_nvme_identity_from_id_ctrl() -> None:
    nvme = NvmeIdentity.from_id_ctrl({"oacs": 0x17, "fna": 0x4, "sanicap": 0x3},
                                     controller="nvme0", namespace=1)
    assert (nvme.format_nvm, nvme.format_crypto, nvme.sanitize_crypto, nvme.sanitize_block,
            nvme.sanitize_overwrite) == (True, True, True, True, False)
    plain = NvmeIdentity.from_id_ctrl({"oacs": 0, "fna": 0x4, "sanicap": "x"},
                                      controller="nvme0", namespace=1)
    assert not (plain.format_nvm or plain.format_crypto or plain.sanitize_crypto)
    assert nvme_controller(_disk("nvme12n3", DiskTransport.NVME)) == ("nvme12", 3)
    assert nvme_controller(_disk("sda", DiskTransport.SATA)) is None


def test_nvme_methods_strongest_first(tmp_path: Path) -> None:
    _block(tmp_path, "nvme0n1", discard=1 << 30)
    found = detect(_disk("nvme0n1", DiskTransport.NVME), scope=Scope.DEVICE, root=tmp_path,
                   id_ctrl=lambda controller: {"oacs": 0x2, "fna": 0, "sanicap": 0x2})
    assert found.methods == (Method.NVME_SANITIZE_BLOCK, Method.NVME_FORMAT_USER_DATA,
                             Method.DISCARD, Method.OVERWRITE)
    assert "nvme-sanitize-crypto: the controller does not support it" in found.passed_over
    assert found.nvme is not None and found.nvme.controller == "nvme0"


def test_the_recovery_disk_gets_partition_methods_only(tmp_path: Path) -> None:
    _block(tmp_path, "nvme0n1", discard=0)

    def never(controller: str) -> dict[str, object]:
        raise AssertionError("no NVMe command for a partition-level erase")

    found = detect(_disk("nvme0n1", DiskTransport.NVME), scope=Scope.PARTITION,
                   root=tmp_path, id_ctrl=never)
    assert found.methods == (Method.OVERWRITE,)
    assert found.passed_over == ("device-level methods: this disk holds RECOVERY",
                                 "discard: the device does not support it")


def test_no_ata_or_nvme_command_through_a_usb_bridge(tmp_path: Path) -> None:
    _block(tmp_path, "sdb", discard=0)
    found = detect(_disk("sdb", DiskTransport.USB), scope=Scope.DEVICE, root=tmp_path)
    assert found.methods == (Method.OVERWRITE,)
    assert "behind a usb bridge" in found.passed_over[0]


def _ata_disk(root: Path, words: tuple[int, ...]) -> Disk:
    sysfs_path = "/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sda"
    port = root / "sys/devices/pci0000:00/0000:00:1f.2/ata3"
    identify = port / "link3/dev3.0/ata_device/dev3.0/id"
    identify.parent.mkdir(parents=True)
    identify.write_text(_sysfs_text(words))
    _block(root, "sda", discard=1 << 20)
    return _disk("sda", DiskTransport.SATA, sysfs_path)


def test_ata_security_erase_unless_frozen(tmp_path: Path) -> None:
    disk = _ata_disk(tmp_path, _words(w82=(1,), w128=(0, 5), w169=(0,)))
    assert ata_identify_path(disk, root=tmp_path) is not None
    found = detect(disk, scope=Scope.DEVICE, root=tmp_path)
    assert found.methods == (Method.ATA_SECURITY_ERASE_ENHANCED, Method.ATA_SECURITY_ERASE,
                             Method.DISCARD, Method.OVERWRITE)


def test_a_frozen_ata_drive_is_passed_over_with_why(tmp_path: Path) -> None:
    disk = _ata_disk(tmp_path, _words(w59=(12, 14), w82=(1,), w128=(0, 3)))
    found = detect(disk, scope=Scope.DEVICE, root=tmp_path)
    assert found.methods == (Method.ATA_SANITIZE_OVERWRITE, Method.DISCARD, Method.OVERWRITE)
    assert any("frozen by the firmware" in reason for reason in found.passed_over)
