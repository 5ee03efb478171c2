"""manufData: what a unit needs to manufacture itself (schema 1).

The one definition of the document the Kiln server serves at `mfgurl=` (DESIGN.md
"Contracts"): typed models from which come the parser (`load_manufdata`, which lists every
problem before any disk is touched), the serialiser (`kiln.contract.to_json`) and the JSON
Schema the server publishes (`manufdata_schema`). Rules every reader must know:

- **URLs** (files, hooks, server endpoints) may be relative: they are resolved against the URL
  manufData was fetched from (`resolve_url`, RFC 3986). Absolute ones are http or https.
- **Variants** are tried in order; the first whose `dmi` patterns all match (shell globs,
  case-sensitive, DMI values stripped of surrounding blanks) is the unit's variant. A variant
  with no DMI pattern matches every unit, so only the last may have none.
- **Counts** (disks, NICs, PCI and USB devices) are exact: `count` devices match the spec.
- **Layout**: PRIMARY takes the rest of its disk unless `primary_size_bytes` is set.
  `data_size_bytes`: null → no DATA partition; 0 → DATA takes the rest (then PRIMARY needs a
  size); > 0 → DATA of that size. `recovery_disk: separate` → ESP (UEFI) and RECOVERY go on
  the disk of the spec with role `recovery`, PRIMARY and DATA on the `primary` one.
- **Files** land on RECOVERY at `destination` (relative; `..`, and Kiln's own `log/`,
  `state/`, `requests/`, `Image/quarantine/`, `Image/.incoming/` are refused); images go to
  `Image/<name>.upd`, where the image store looks.
"""

from __future__ import annotations

import enum
import fnmatch
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

from kiln.contract import ContractError, constraint, json_schema, parse

SCHEMA_VERSION = 1
MIB = 1024**2
GIB = 1024**3
MIN_RECOVERY_BYTES = 256 * MIB
MIN_PRIMARY_BYTES = 1 * GIB  # what "PRIMARY takes the rest" must leave at least
PARTITION_OVERHEAD_BYTES = 8 * MIB  # partition tables, 1 MiB alignment, the BIOS gap

NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
PRODUCT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # as in image manifests
SHA256 = r"^[0-9a-f]{64}$"
HEX4 = r"^[0-9a-f]{4}$"
OUI = r"^[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}$"
URL = r"^[!-~]+$"  # printable ASCII: percent-encode the rest
PEM = r"-----BEGIN CERTIFICATE-----[\s\S]+-----END CERTIFICATE-----"
_RESERVED = ("log", "state", "requests", "Image/quarantine", "Image/.incoming")


class FileKind(enum.StrEnum):
    IMAGE = "image"  # a signed .upd image for Image/
    KERNEL = "kernel"  # the Kiln kernel and ramdisk that boot from RECOVERY
    INITRD = "initrd"
    OTHER = "other"


class Firmware(enum.StrEnum):
    UEFI = "uefi"  # GPT with an ESP
    BIOS = "bios"  # MBR, RECOVERY bootable
    AUTO = "auto"  # whatever the unit booted the ramdisk with


class RecoveryDisk(enum.StrEnum):
    SAME = "same"  # RECOVERY on the primary disk
    SEPARATE = "separate"  # RECOVERY on its own disk (e.g. a SATA DOM): the role=recovery spec


class DiskRole(enum.StrEnum):
    PRIMARY = "primary"  # gets the layout (all of it, unless recovery_disk is separate)
    RECOVERY = "recovery"  # the separate RECOVERY disk
    DATA = "data"  # a disk for the OS's data: validated and erased, never partitioned by Kiln
    ANY = "any"  # must be present; no role


class Transport(enum.StrEnum):
    NVME = "nvme"
    SATA = "sata"
    SAS = "sas"
    VIRTIO = "virtio"
    USB = "usb"
    MMC = "mmc"
    ANY = "any"


class HookPoint(enum.StrEnum):
    BEFORE_VALIDATE = "before_validate"  # manufData loaded, nothing checked yet
    AFTER_VALIDATE = "after_validate"  # the variant is known and the hardware passed
    AFTER_PARTITION = "after_partition"  # file systems made, RECOVERY mounted
    AFTER_IMAGES = "after_images"  # every file is on RECOVERY and verified
    BEFORE_REBOOT = "before_reboot"  # boot configured; the last step


class OnFailure(enum.StrEnum):
    FAIL = "fail"  # the unit fails manufacture
    WARN = "warn"  # reported as a warning; manufacture goes on


def _url_problems(where: str, url: str) -> Iterator[tuple[str, str]]:
    scheme = urlsplit(url).scheme
    if scheme not in ("", "http", "https"):
        yield where, f"{url!r}: expected an http(s) URL or one relative to manufData's"


@dataclass(frozen=True, kw_only=True)
class ServerEndpoints:
    """Where the unit talks to the Kiln server; the server fills this in when it serves a
    profile."""

    events_url: str = field(metadata=constraint(pattern=URL, description="POST event batches"))
    units_url: str = field(metadata=constraint(
        pattern=URL, description="registration and the unit's report (hardware, result)"))
    credentials_url: str = field(metadata=constraint(pattern=URL,
                                                     description="credential escrow"))
    ca_pem: str | None = field(default=None, metadata=constraint(
        pattern=PEM, description="PEM of the CA the unit verifies an https server against"))
    ddi_url: str | None = field(default=None, metadata=constraint(
        pattern=URL, description="hawkBit DDI root of the unit's tenant "
                                 "(`…/{tenant}/controller/v1`): the update agent polls "
                                 "`{ddi_url}/{serial}` with its device token"))

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        for name in ("events_url", "units_url", "credentials_url"):
            yield from _url_problems(name, getattr(self, name))
        if self.ddi_url is not None:
            yield from _url_problems("ddi_url", self.ddi_url)


@dataclass(frozen=True, kw_only=True)
class FileSpec:
    """A file the unit downloads, verifies and places on RECOVERY."""

    url: str = field(metadata=constraint(pattern=URL, description="may be relative"))
    sha256: str = field(metadata=constraint(pattern=SHA256))
    size_bytes: int = field(metadata=constraint(minimum=0))
    destination: str = field(metadata=constraint(
        min_length=1, max_length=255,
        description="path relative to RECOVERY's root, e.g. Image/app-1.0.upd, boot/vmlinuz"))
    kind: FileKind = FileKind.OTHER

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        yield from _url_problems("url", self.url)
        path, parts = self.destination, self.destination.split("/")
        if path.startswith("/"):
            yield "destination", f"{path!r} is absolute: expected a path relative to RECOVERY"
        elif any(part in ("", ".", "..") for part in parts) or "\\" in path:
            yield "destination", f"{path!r}: no '..', '.', empty parts or backslashes allowed"
        elif any(path == top or path.startswith(top + "/") for top in _RESERVED):
            yield "destination", f"{path!r} is inside a directory Kiln owns"
        elif self.kind is FileKind.IMAGE and (len(parts) != 2 or parts[0] != "Image"
                                              or not parts[1].endswith(".upd")):
            yield "destination", f"{path!r}: an image goes to Image/<name>.upd"


@dataclass(frozen=True, kw_only=True)
class DmiMatch:
    """Shell-glob patterns for /sys/class/dmi/id values; unset ones match anything."""

    sys_vendor: str | None = None
    product_name: str | None = None
    product_version: str | None = None
    board_vendor: str | None = None
    board_name: str | None = None

    @property
    def matches_all(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def matches(self, dmi: Mapping[str, str]) -> bool:
        """`dmi` maps sys_vendor, product_name… to the unit's values (a missing one fails a
        pattern)."""
        for f in fields(self):
            pattern = getattr(self, f.name)
            if pattern is not None and (f.name not in dmi or not fnmatch.fnmatchcase(
                    dmi[f.name].strip(), pattern)):
                return False
        return True


@dataclass(frozen=True, kw_only=True)
class CpuSpec:
    model: str | None = field(default=None, metadata=constraint(
        description="glob for the model name, e.g. '*Xeon* E-2224 *'"))
    min_cores: int | None = field(default=None, metadata=constraint(
        minimum=1, description="physical cores, all sockets together"))
    max_cores: int | None = field(default=None, metadata=constraint(minimum=1))
    sockets: int | None = field(default=None, metadata=constraint(minimum=1))
    flags: tuple[str, ...] = field(default=(), metadata=constraint(
        pattern=r"^[a-z0-9_]+$", description="flags the CPU must have, e.g. aes, avx2"))

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.min_cores and self.max_cores and self.min_cores > self.max_cores:
            yield "max_cores", f"{self.max_cores} is below min_cores {self.min_cores}"


@dataclass(frozen=True, kw_only=True)
class MemorySpec:
    size_bytes: int = field(metadata=constraint(minimum=1, description="installed memory"))
    tolerance_percent: float = field(default=5.0, metadata=constraint(
        minimum=0, maximum=50, description="± around size_bytes (what the kernel reserves)"))

    def accepts(self, size_bytes: int) -> bool:
        return abs(size_bytes - self.size_bytes) <= self.size_bytes * self.tolerance_percent / 100


@dataclass(frozen=True, kw_only=True)
class DiskSpec:
    role: DiskRole = DiskRole.ANY
    min_size_bytes: int = field(metadata=constraint(minimum=1))
    max_size_bytes: int | None = field(default=None, metadata=constraint(minimum=1))
    model: str | None = field(default=None, metadata=constraint(description="glob"))
    transport: Transport = Transport.ANY
    count: int = field(default=1, metadata=constraint(minimum=1))

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.max_size_bytes is not None and self.max_size_bytes < self.min_size_bytes:
            yield "max_size_bytes", f"{self.max_size_bytes} is below min_size_bytes"
        if self.role in (DiskRole.PRIMARY, DiskRole.RECOVERY) and self.count != 1:
            yield "count", f"a {self.role} disk spec names exactly one disk"


@dataclass(frozen=True, kw_only=True)
class NicSpec:
    count: int = field(metadata=constraint(minimum=1, description="physical interfaces"))
    mac_ouis: tuple[str, ...] = field(default=(), metadata=constraint(
        pattern=OUI, description="each NIC's MAC starts with one of these (none: any)"))

    def accepts_mac(self, mac: str) -> bool:
        return not self.mac_ouis or mac[:8].lower() in {oui.lower() for oui in self.mac_ouis}


@dataclass(frozen=True, kw_only=True)
class PciDeviceSpec:
    vendor_id: str = field(metadata=constraint(pattern=HEX4))
    device_id: str = field(metadata=constraint(pattern=HEX4))
    count: int = field(default=1, metadata=constraint(minimum=1))
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class UsbDeviceSpec:
    vendor_id: str = field(metadata=constraint(pattern=HEX4))
    product_id: str = field(metadata=constraint(pattern=HEX4))
    count: int = field(default=1, metadata=constraint(minimum=1))
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class Variant:
    """A hardware variant: how to recognise it and what it must have."""

    name: str = field(metadata=constraint(pattern=NAME))
    description: str = ""
    dmi: DmiMatch = DmiMatch()
    cpu: CpuSpec | None = None
    memory: MemorySpec | None = None
    disks: tuple[DiskSpec, ...] = field(metadata=constraint(min_items=1))
    nics: NicSpec | None = None
    pci: tuple[PciDeviceSpec, ...] = ()
    usb: tuple[UsbDeviceSpec, ...] = ()

    def disk(self, role: DiskRole) -> DiskSpec | None:
        return next((disk for disk in self.disks if disk.role is role), None)


@dataclass(frozen=True, kw_only=True)
class DiskLayout:
    firmware: Firmware = Firmware.AUTO
    recovery_disk: RecoveryDisk = RecoveryDisk.SAME
    esp_size_bytes: int = field(default=256 * MIB, metadata=constraint(minimum=32 * MIB))
    recovery_size_bytes: int = field(metadata=constraint(minimum=MIN_RECOVERY_BYTES))
    primary_size_bytes: int | None = field(default=None, metadata=constraint(
        minimum=MIN_PRIMARY_BYTES, description="null: PRIMARY takes the rest of its disk"))
    data_size_bytes: int | None = field(default=None, metadata=constraint(
        minimum=0, description="null: no DATA; 0: DATA takes the rest of the disk"))

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.data_size_bytes == 0 and self.primary_size_bytes is None:
            yield "data_size_bytes", ("0 (DATA takes the rest) needs primary_size_bytes: "
                                      "PRIMARY and DATA cannot both take the rest")

    def minimum_disk_bytes(self, role: DiskRole) -> int:
        """The smallest `role` disk (primary or recovery) that holds its part of the layout."""
        boot = (self.esp_size_bytes if self.firmware is not Firmware.BIOS else 0) + \
            self.recovery_size_bytes
        if role is DiskRole.RECOVERY:
            return boot + PARTITION_OVERHEAD_BYTES
        size = boot if self.recovery_disk is RecoveryDisk.SAME else 0
        size += self.primary_size_bytes or MIN_PRIMARY_BYTES
        return size + (self.data_size_bytes or 0) + PARTITION_OVERHEAD_BYTES


@dataclass(frozen=True, kw_only=True)
class HookStep:
    """A script the unit downloads, verifies and runs at a named point of manufacture."""

    point: HookPoint
    name: str = field(metadata=constraint(pattern=NAME))
    url: str = field(metadata=constraint(pattern=URL, description="may be relative"))
    sha256: str = field(metadata=constraint(pattern=SHA256))
    timeout_seconds: int = field(default=300, metadata=constraint(minimum=1, maximum=86400))
    on_failure: OnFailure = OnFailure.FAIL
    variants: tuple[str, ...] = field(default=(), metadata=constraint(
        pattern=NAME, description="run only for these variants (none: all)"))

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        yield from _url_problems("url", self.url)


@dataclass(frozen=True, kw_only=True)
class ManufData:
    """Kiln manufData, schema 1: what a unit needs to manufacture itself."""

    schema: Literal[1]
    product: str = field(metadata=constraint(pattern=PRODUCT))
    server: ServerEndpoints | None = None
    files: tuple[FileSpec, ...] = field(metadata=constraint(min_items=1))
    variants: tuple[Variant, ...] = field(metadata=constraint(min_items=1))
    layout: DiskLayout
    hooks: tuple[HookStep, ...] = ()

    def variant_for(self, dmi: Mapping[str, str]) -> Variant | None:
        """The first variant whose DMI patterns match the unit's values."""
        return next((variant for variant in self.variants if variant.dmi.matches(dmi)), None)

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        yield from _duplicates("files", "destination", [f.destination for f in self.files])
        yield from _duplicates("variants", "name", [v.name for v in self.variants])
        yield from _duplicates("hooks", "name", [h.name for h in self.hooks])
        kinds = Counter(f.kind for f in self.files)
        if not kinds[FileKind.IMAGE]:
            yield "files", "no file of kind 'image': a unit needs one to restore from"
        if kinds[FileKind.KERNEL] > 1 or kinds[FileKind.INITRD] > 1:
            yield "files", "more than one file of kind 'kernel' or 'initrd'"
        elif kinds[FileKind.KERNEL] != kinds[FileKind.INITRD]:
            yield "files", "a 'kernel' file needs an 'initrd' file, and the other way round"
        for index, variant in enumerate(self.variants):
            yield from self._variant_problems(f"variants[{index}]", variant,
                                              last=index == len(self.variants) - 1)
        names = {v.name for v in self.variants}
        for index, hook in enumerate(self.hooks):
            for name in hook.variants:
                if name not in names:
                    yield f"hooks[{index}].variants", f"no variant is named {name!r}"

    def _variant_problems(self, where: str, variant: Variant, *,
                          last: bool) -> Iterator[tuple[str, str]]:
        if variant.dmi.matches_all and not last:
            yield f"{where}.dmi", "matches every unit, so the variants after it never would"
        separate = self.layout.recovery_disk is RecoveryDisk.SEPARATE
        roles = Counter(disk.role for disk in variant.disks)
        for role, wanted in ((DiskRole.PRIMARY, 1), (DiskRole.RECOVERY, int(separate))):
            if roles[role] != wanted:
                yield f"{where}.disks", (f"expected {wanted} disk spec(s) with role {role}, got "
                                         f"{roles[role]} (layout.recovery_disk is "
                                         f"{self.layout.recovery_disk})")
        for index, disk in enumerate(variant.disks):
            if disk.role not in (DiskRole.PRIMARY, DiskRole.RECOVERY):
                continue
            need = self.layout.minimum_disk_bytes(disk.role)
            if disk.min_size_bytes < need:
                yield f"{where}.disks[{index}].min_size_bytes", (
                    f"{disk.min_size_bytes} is too small for the layout, which needs {need} "
                    f"bytes on the {disk.role} disk")


def _duplicates(where: str, key: str, values: list[str]) -> Iterator[tuple[str, str]]:
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            yield f"{where}[{index}].{key}", f"{value!r} repeats {where}[{first[value]}]"
        first.setdefault(value, index)


def load_manufdata(text: str | bytes) -> ManufData:
    """Parse and validate a manufData document; raise `ContractError` listing every problem."""
    duplicate_keys: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        counts = Counter(key for key, _ in items)
        duplicate_keys.extend(f"duplicate key {key!r} in an object" for key, n in counts.items()
                              if n > 1)
        return dict(items)

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        document = json.loads(text, object_pairs_hook=pairs, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise ContractError([f"not JSON: {e.msg} at line {e.lineno}, column {e.colno}"],
                            subject="manufData") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ContractError([f"not JSON: {e}"], subject="manufData") from None
    if not isinstance(document, dict):
        raise ContractError(["manufData must be a JSON object"], subject="manufData")
    version = document.get("schema")
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
        raise ContractError([f"schema {version} is not supported (this Kiln reads schema "
                             f"{SCHEMA_VERSION})"], subject="manufData")
    try:
        manufdata = parse(ManufData, document, subject="manufData")
    except ContractError as e:
        raise ContractError(duplicate_keys + list(e.problems), subject="manufData") from None
    if duplicate_keys:
        raise ContractError(duplicate_keys, subject="manufData")
    return manufdata


def manufdata_schema(*, schema_id: str | None = None) -> dict[str, Any]:
    """The JSON Schema of manufData (draft 2020-12). It checks every field; the rules between
    fields (`cross_checks`) are only in `load_manufdata`."""
    return json_schema(ManufData, schema_id=schema_id)


def resolve_url(manufdata_url: str, url: str) -> str:
    """A URL from manufData made absolute against the URL manufData was fetched from."""
    return urljoin(manufdata_url, url)

