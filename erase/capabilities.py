"""What each device can do to destroy its data, and the methods to try, strongest first.

Facts come from the device itself, never from its name:

- NVMe: `nvme id-ctrl -o json` on the controller: `oacs` bit 1 (Format NVM), `fna` bit 2
  (crypto erase as part of a format), `sanicap` bits 0/1/2 (sanitize crypto, block erase,
  overwrite).
- ATA through libata: the IDENTIFY DEVICE words the kernel keeps in
  `/sys/class/ata_device/devN.M/id`: word 59 bits 12 to 15 (sanitize: supported, crypto
  scramble, overwrite, block erase), word 82 bit 1 and word 128 (security: supported,
  enabled, locked, frozen, enhanced erase), word 169 bit 0 (TRIM).
- Anything behind a USB or RAID bridge gets no ATA or NVMe command at all: a bridge can
  mangle or drop them, and a security erase that the bridge interrupts leaves a locked disk.

Scope: on the disk that holds RECOVERY only partition-level methods exist (discard of the
partition's range, then overwrite); a device-level method there would destroy RECOVERY.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.blockdev import Disk, DiskTransport
from kiln.errors import KilnError
from kiln.process import CommandError, run
from kiln.sysfs import read_attr

log = logging.getLogger(__name__)


class Scope(enum.StrEnum):
    DEVICE = "device"  # the whole disk: RECOVERY is elsewhere
    PARTITION = "partition"  # one partition of the disk that holds RECOVERY


class Method(enum.StrEnum):
    """Erase methods, and what NIST SP 800-88 calls each (purge or clear)."""

    NVME_SANITIZE_CRYPTO = "nvme-sanitize-crypto"
    NVME_SANITIZE_BLOCK = "nvme-sanitize-block"
    NVME_FORMAT_CRYPTO = "nvme-format-crypto"
    NVME_SANITIZE_OVERWRITE = "nvme-sanitize-overwrite"
    NVME_FORMAT_USER_DATA = "nvme-format-user-data"
    ATA_SANITIZE_CRYPTO = "ata-sanitize-crypto"
    ATA_SANITIZE_BLOCK = "ata-sanitize-block"
    ATA_SECURITY_ERASE_ENHANCED = "ata-security-erase-enhanced"
    ATA_SECURITY_ERASE = "ata-security-erase"
    ATA_SANITIZE_OVERWRITE = "ata-sanitize-overwrite"
    DISCARD = "discard"
    OVERWRITE = "overwrite"

    @property
    def nist_category(self) -> str:
        return "clear" if self in (Method.DISCARD, Method.OVERWRITE) else "purge"


class CapabilityError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class AtaIdentity:
    """The erase-related bits of ATA IDENTIFY DEVICE."""

    sanitize: bool = False
    sanitize_crypto: bool = False
    sanitize_overwrite: bool = False
    sanitize_block: bool = False
    security: bool = False
    security_enabled: bool = False
    security_locked: bool = False
    security_frozen: bool = False
    enhanced_erase: bool = False
    trim: bool = False

    @classmethod
    def from_words(cls, words: tuple[int, ...]) -> AtaIdentity:
        if len(words) < 170:
            raise CapabilityError(f"ATA IDENTIFY has {len(words)} words, expected 256")

        def bit(word: int, number: int) -> bool:
            return bool(words[word] >> number & 1)

        security = bit(82, 1) and bit(128, 0)
        return cls(sanitize=bit(59, 12), sanitize_crypto=bit(59, 12) and bit(59, 13),
                   sanitize_overwrite=bit(59, 12) and bit(59, 14),
                   sanitize_block=bit(59, 12) and bit(59, 15),
                   security=security, security_enabled=security and bit(128, 1),
                   security_locked=security and bit(128, 2),
                   security_frozen=security and bit(128, 3),
                   enhanced_erase=security and bit(128, 5), trim=bit(169, 0))


@dataclass(frozen=True, kw_only=True)
class NvmeIdentity:
    controller: str  # nvme0: admin commands go to /dev/nvme0
    namespace: int
    format_nvm: bool = False
    format_crypto: bool = False
    sanitize_crypto: bool = False
    sanitize_block: bool = False
    sanitize_overwrite: bool = False

    @classmethod
    def from_id_ctrl(cls, document: dict[str, object], *, controller: str,
                     namespace: int) -> NvmeIdentity:
        def number(key: str) -> int:
            value = document.get(key, 0)
            return value if isinstance(value, int) else 0

        oacs, fna, sanicap = number("oacs"), number("fna"), number("sanicap")
        return cls(controller=controller, namespace=namespace, format_nvm=bool(oacs & 0x2),
                   format_crypto=bool(oacs & 0x2) and bool(fna & 0x4),
                   sanitize_crypto=bool(sanicap & 0x1), sanitize_block=bool(sanicap & 0x2),
                   sanitize_overwrite=bool(sanicap & 0x4))


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """One device's erase capabilities and the methods to try on it, strongest first, with
    why each stronger one is not on the list."""

    disk: Disk
    scope: Scope
    discard: bool
    logical_sector: int
    nvme: NvmeIdentity | None = None
    ata: AtaIdentity | None = None
    methods: tuple[Method, ...] = ()
    passed_over: tuple[str, ...] = field(default=())


def ata_words(text: str) -> tuple[int, ...]:
    """`/sys/class/ata_device/devN.M/id`: 256 words as 4-digit hex, 8 to a line."""
    try:
        return tuple(int(word, 16) for word in text.split())
    except ValueError as e:
        raise CapabilityError(f"unreadable ATA IDENTIFY data: {e}") from None


def ata_identify_path(disk: Disk, *, root: Path = Path("/")) -> Path | None:
    """The libata `id` file of the disk's ATA device (`.../ataN/linkN/devN.M/...`)."""
    parts = Path(disk.sysfs_path).parts
    for index, part in enumerate(parts):
        if part.startswith("ata") and part[3:].isdigit():
            port = root / Path(*parts[1:index + 1])
            found = sorted(port.glob("link*/dev*/ata_device/dev*/id"))
            return found[0] if found else None
    return None


def nvme_controller(disk: Disk) -> tuple[str, int] | None:
    """nvme0n1 → ("nvme0", 1), from the name the kernel gave the namespace."""
    name = disk.name
    if not name.startswith("nvme") or "n" not in name[4:]:
        return None
    controller, _, namespace = name.rpartition("n")
    if not controller[4:].isdigit() or not namespace.isdigit():
        return None
    return controller, int(namespace)


def _nvme_id_ctrl(controller: str) -> dict[str, object]:
    result = run(["nvme", "id-ctrl", f"/dev/{controller}", "--output-format=json"], timeout=60)
    document = json.loads(result.text)
    if not isinstance(document, dict):
        raise CapabilityError(f"nvme id-ctrl /dev/{controller}: not a JSON object")
    return document


IdCtrl = Callable[[str], dict[str, object]]


def detect(disk: Disk, *, scope: Scope, root: Path = Path("/"),
           id_ctrl: IdCtrl = _nvme_id_ctrl) -> Capabilities:
    block = root / "sys/block" / disk.name
    discard = int(read_attr(block / "queue/discard_max_bytes") or "0") > 0
    sector = int(read_attr(block / "queue/logical_block_size") or "512")
    passed: list[str] = []
    methods: list[Method] = []
    nvme: NvmeIdentity | None = None
    ata: AtaIdentity | None = None
    bridged = disk.transport in (DiskTransport.USB, DiskTransport.SAS, DiskTransport.UNKNOWN)
    if scope is Scope.PARTITION:
        passed.append("device-level methods: this disk holds RECOVERY")
    elif bridged:
        passed.append(f"ATA/NVMe commands: the disk is behind a {disk.transport} bridge or "
                      "controller, which may drop or mangle them")
    elif disk.transport in (DiskTransport.VIRTIO, DiskTransport.MMC):
        passed.append(f"device-level methods: Kiln has none for a {disk.transport} disk")
    elif disk.transport is DiskTransport.NVME and (found := nvme_controller(disk)):
        try:
            nvme = NvmeIdentity.from_id_ctrl(id_ctrl(found[0]), controller=found[0],
                                             namespace=found[1])
        except (CommandError, ValueError, CapabilityError) as e:
            passed.append(f"NVMe methods: cannot identify the controller: {e}")
        if nvme is not None:
            methods += _nvme_methods(nvme, passed)
    elif disk.transport is DiskTransport.SATA:
        path = ata_identify_path(disk, root=root)
        text = read_attr(path) if path else None
        if text is None:
            passed.append("ATA methods: the kernel exposes no IDENTIFY data for this disk")
        else:
            try:
                ata = AtaIdentity.from_words(ata_words(text))
            except CapabilityError as e:
                passed.append(f"ATA methods: {e}")
        if ata is not None:
            methods += _ata_methods(ata, passed)
    if discard:
        methods.append(Method.DISCARD)
    else:
        passed.append("discard: the device does not support it")
    methods.append(Method.OVERWRITE)
    return Capabilities(disk=disk, scope=scope, discard=discard, logical_sector=sector,
                        nvme=nvme, ata=ata, methods=tuple(methods), passed_over=tuple(passed))


def _nvme_methods(nvme: NvmeIdentity, passed: list[str]) -> list[Method]:
    offered = [(nvme.sanitize_crypto, Method.NVME_SANITIZE_CRYPTO),
               (nvme.sanitize_block, Method.NVME_SANITIZE_BLOCK),
               (nvme.format_crypto, Method.NVME_FORMAT_CRYPTO),
               (nvme.sanitize_overwrite, Method.NVME_SANITIZE_OVERWRITE),
               (nvme.format_nvm, Method.NVME_FORMAT_USER_DATA)]
    for supported, method in offered:
        if not supported:
            passed.append(f"{method}: the controller does not support it")
    return [method for supported, method in offered if supported]


def _ata_methods(ata: AtaIdentity, passed: list[str]) -> list[Method]:
    methods: list[Method] = []
    for supported, method in ((ata.sanitize_crypto, Method.ATA_SANITIZE_CRYPTO),
                              (ata.sanitize_block, Method.ATA_SANITIZE_BLOCK)):
        (methods.append(method) if supported
         else passed.append(f"{method}: the drive does not support it"))
    if not ata.security:
        passed.append("ATA security erase: the drive does not support the feature set")
    elif ata.security_frozen:
        passed.append("ATA security erase: the drive is frozen by the firmware (a suspend and "
                      "resume, or a hot-plug, unfreezes most drives)")
    elif ata.security_locked:
        passed.append("ATA security erase: the drive is locked with a password Kiln "
                      "does not know")
    else:
        if ata.enhanced_erase:
            methods.append(Method.ATA_SECURITY_ERASE_ENHANCED)
        else:
            passed.append(f"{Method.ATA_SECURITY_ERASE_ENHANCED}: not supported")
        methods.append(Method.ATA_SECURITY_ERASE)
    if ata.sanitize_overwrite:
        methods.append(Method.ATA_SANITIZE_OVERWRITE)
    return methods
