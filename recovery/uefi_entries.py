"""Kiln's own UEFI boot entries in NVRAM: created once, never duplicated, normal first.

Runs inside the unit only (it needs efivarfs), after `recovery.bootsetup.install_boot` put the
kernel and ramdisk on the ESP. The fallback loader `\\EFI\\BOOT\\BOOTX64.EFI` already boots
the unit when NVRAM is empty or reset; these entries make Kiln explicit in the firmware's
boot order and boot menu. Rules:

- **Three entries**, each the kernel's EFI stub on the ESP (`\\kiln\\vmlinuz`) with
  `initrd=\\kiln\\initrd.zst`, the console arguments and the menu entry's arguments as its
  load options: `Kiln` (normal), `Kiln factory restore`, `Kiln data erase` (the label prefix
  is the caller's). They boot without GRUB, so a broken GRUB config does not strand a unit.
- **Reading** uses efivarfs directly (`Boot####` and `BootOrder` under
  /sys/firmware/efi/efivars): an EFI_LOAD_OPTION is a fixed binary format (UEFI 2.10
  §3.1.3), while `efibootmgr -v` prints a human rendering of device paths and load options
  that changed between versions (and shows UTF-16 options as dotted text).
- **Creating** writes the new `Boot####` file into efivarfs directly (a new variable needs
  no flag changes): `efibootmgr -c` builds the device path from sysfs through libefiboot,
  which fails on QEMU's virtio-blk ("Could not prepare Boot variable: No such file or
  directory", efibootmgr 17 / libefivar 37), while the plan already knows the ESP's number,
  GPT GUID, start and size: `HD(n,GPT,guid,start,size)/File(\\kiln\\vmlinuz)`.
  **Deleting** (`-B`, which clears efivarfs' immutable flag) and **BootOrder** (`-o`) go
  through `efibootmgr`.
- **Idempotent**: an existing entry is kept when its label, file path, ESP partition GUID
  and load options all match what is wanted; any other entry with one of Kiln's labels (an
  older console setting, a re-partitioned disk, a duplicate from an interrupted run) is
  deleted, and a missing one is created. A re-run with nothing changed writes nothing but the
  BootOrder, and only when it differs.
- **BootOrder**: Kiln's normal entry first, then every non-Kiln entry in its old order.
  Restore and erase are never in BootOrder, so firmware cannot fall through to them after a
  failed boot; they are chosen on purpose (GRUB's menu, or `efibootmgr --bootnext`).
- Failures raise `UefiEntriesError` naming the step.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.process import CommandError, run
from recovery.bootsetup import ESP_KILN_DIR, INITRD_NAME, KERNEL_NAME, MENU, kernel_arguments
from recovery.partitions import PartitionPlan, PartitionRole

EFIVARS = Path("/sys/firmware/efi/efivars")
EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
NV_BS_RT = 0x7  # non-volatile, boot service and runtime access
LOAD_OPTION_ACTIVE = 0x1
_BOOT_VAR = re.compile(rf"Boot([0-9A-F]{{4}})-{EFI_GLOBAL_VARIABLE}")
_HD, _FILE, _END = (0x04, 0x01), (0x04, 0x04), (0x7F, 0xFF)
_HD_NODE = struct.Struct("<IQQ16sBB")  # partition number, start, size, signature, format, type
_GPT_SIGNATURE = 0x02


class UefiEntriesError(KilnError):
    """Reading or changing the UEFI boot entries failed; the message names the step."""


@dataclass(frozen=True, kw_only=True)
class LoadOption:
    """One Boot#### variable, decoded."""

    number: int
    description: str
    active: bool
    file_path: str | None  # the device path's File() node, e.g. \kiln\vmlinuz
    partition_uuid: str | None  # the HD() node's GPT partition GUID, lower case
    options: str | None  # the optional data as UTF-16 text (NULs stripped); None if not text


@dataclass(frozen=True, kw_only=True)
class WantedEntry:
    label: str
    loader: str
    options: str
    in_boot_order: bool


def wanted_entries(*, console_args: str, label_prefix: str = "Kiln", kernel: str = KERNEL_NAME,
                   initrd: str = INITRD_NAME) -> tuple[WantedEntry, ...]:
    """The entries for the kernel and ramdisk named `kernel` and `initrd` in the ESP's kiln/."""
    loader = f"\\{ESP_KILN_DIR}\\{kernel}"
    initrd_option = f"initrd=\\{ESP_KILN_DIR}\\{initrd}"
    return tuple(WantedEntry(
        label=label_prefix + entry.title.removeprefix("Kiln"), loader=loader,
        options=" ".join((initrd_option, kernel_arguments(entry, console_args))).strip(),
        in_boot_order=index == 0) for index, entry in enumerate(MENU))


def parse_load_option(number: int, data: bytes) -> LoadOption:
    """An EFI_LOAD_OPTION (without efivarfs' 4-byte attribute prefix)."""
    if len(data) < 6:
        raise ValueError(f"Boot{number:04X}: {len(data)} bytes is too short")
    attributes, path_length = struct.unpack_from("<IH", data)
    end = 6
    while end + 1 < len(data) and data[end:end + 2] != b"\0\0":
        end += 2
    description = data[6:end].decode("utf-16-le", errors="replace")
    paths_start = end + 2
    device_path = data[paths_start:paths_start + path_length]
    file_path, partition_uuid = _walk(device_path)
    optional = data[paths_start + path_length:]
    try:
        options: str | None = optional.decode("utf-16-le").rstrip("\0") \
            if len(optional) % 2 == 0 else None
    except UnicodeDecodeError:
        options = None
    return LoadOption(number=number, description=description,
                      active=bool(attributes & LOAD_OPTION_ACTIVE), file_path=file_path,
                      partition_uuid=partition_uuid, options=options)


def _walk(device_path: bytes) -> tuple[str | None, str | None]:
    file_parts: list[str] = []
    partition_uuid = None
    offset = 0
    while offset + 4 <= len(device_path):
        kind, sub, length = struct.unpack_from("<BBH", device_path, offset)
        if length < 4 or (kind, sub) == _END:
            break
        body = device_path[offset + 4:offset + length]
        if (kind, sub) == _FILE:
            file_parts.append(body.decode("utf-16-le", errors="replace").rstrip("\0"))
        elif (kind, sub) == _HD and len(body) >= _HD_NODE.size:
            *_, signature, _fmt, sig_type = _HD_NODE.unpack_from(body)
            if sig_type == _GPT_SIGNATURE:
                partition_uuid = str(uuid.UUID(bytes_le=signature))
        offset += length
    return ("".join(file_parts) or None), partition_uuid


def encode_load_option(*, description: str, device_path: bytes, options: str,
                       active: bool = True) -> bytes:
    """The inverse of `parse_load_option` (tests and fakes build entries with it)."""
    return (struct.pack("<IH", LOAD_OPTION_ACTIVE if active else 0, len(device_path))
            + (description + "\0").encode("utf-16-le") + device_path
            + options.encode("utf-16-le"))


@dataclass(frozen=True, kw_only=True)
class EspLocation:
    """Where the ESP is, as a device path's HD() node names it (start and size in LBAs)."""

    number: int
    partition_uuid: str
    start: int
    sectors: int

    @classmethod
    def from_plan(cls, plan: PartitionPlan) -> EspLocation:
        esp = plan.partition(PartitionRole.ESP)
        if esp is None:
            raise UefiEntriesError(f"the partition plan for {plan.disk} has no ESP")
        return cls(number=esp.number, partition_uuid=esp.partition_uuid, start=esp.start,
                   sectors=esp.sectors)


def esp_device_path(*, partition: int, partition_uuid: str, file_path: str, start: int = 0,
                    sectors: int = 0) -> bytes:
    """HD(partition, GPT, GUID, start, size)/File(path)/End."""
    hd = _HD_NODE.pack(partition, start, sectors, uuid.UUID(partition_uuid).bytes_le, 0x02,
                       _GPT_SIGNATURE)
    name = (file_path + "\0").encode("utf-16-le")
    return (struct.pack("<BBH", *_HD, 4 + len(hd)) + hd
            + struct.pack("<BBH", *_FILE, 4 + len(name)) + name + struct.pack("<BBH", *_END, 4))


def read_boot_entries(efivars: Path = EFIVARS) -> tuple[LoadOption, ...]:
    entries = []
    try:
        for path in sorted(efivars.iterdir()):
            if match := _BOOT_VAR.fullmatch(path.name):
                number = int(match[1], 16)
                entries.append(parse_load_option(number, path.read_bytes()[4:]))
    except (OSError, ValueError) as e:
        raise UefiEntriesError(f"reading the boot entries in {efivars} failed: {e}") from e
    return tuple(entries)


def read_boot_order(efivars: Path = EFIVARS) -> tuple[int, ...]:
    path = efivars / f"BootOrder-{EFI_GLOBAL_VARIABLE}"
    try:
        data = path.read_bytes()[4:] if path.exists() else b""
    except OSError as e:
        raise UefiEntriesError(f"reading {path} failed: {e}") from e
    return struct.unpack(f"<{len(data) // 2}H", data[:len(data) // 2 * 2])


def _matches(entry: LoadOption, wanted: WantedEntry, partition_uuid: str | None) -> bool:
    return (entry.active and entry.file_path is not None
            and entry.file_path.lower() == wanted.loader.lower()
            and entry.options == wanted.options
            and (partition_uuid is None or entry.partition_uuid == partition_uuid.lower()))


def ensure_uefi_entries(*, esp: EspLocation, console_args: str, label_prefix: str = "Kiln",
                        efivars: Path = EFIVARS, efibootmgr: str = "efibootmgr",
                        kernel: str = KERNEL_NAME,
                        initrd: str = INITRD_NAME) -> tuple[LoadOption, ...]:
    """Make NVRAM hold exactly Kiln's wanted entries (normal first in BootOrder) for the ESP
    at `esp`; returns them in `wanted_entries` order. An entry pointing at another ESP (a
    re-partitioned disk: a new GUID) is replaced."""
    wanted = {w.label: w for w in wanted_entries(console_args=console_args,
                                                 label_prefix=label_prefix, kernel=kernel,
                                                 initrd=initrd)}
    kept: dict[str, LoadOption] = {}
    for entry in read_boot_entries(efivars):
        if entry.description not in wanted:
            continue
        if entry.description not in kept and _matches(entry, wanted[entry.description],
                                                      esp.partition_uuid):
            kept[entry.description] = entry
        else:
            _efibootmgr(efibootmgr, ["--bootnum", f"{entry.number:04X}", "--delete-bootnum"],
                        step=f"deleting stale entry Boot{entry.number:04X} "
                             f"({entry.description})")
    for want in wanted.values():
        if want.label not in kept:
            _create(efivars, want, esp)
    found = {e.description: e for e in read_boot_entries(efivars) if e.description in wanted
             and _matches(e, wanted[e.description], esp.partition_uuid)}
    missing = [label for label in wanted if label not in found]
    if missing:
        raise UefiEntriesError(f"no matching boot entry for {', '.join(missing)} after "
                               "creating it")
    ours = {e.number for e in found.values()}
    first = [found[w.label].number for w in wanted.values() if w.in_boot_order]
    old = read_boot_order(efivars)
    order = [*first, *(n for n in old if n not in ours)]
    if tuple(order) != old:
        _efibootmgr(efibootmgr, ["--bootorder", ",".join(f"{n:04X}" for n in order)],
                    step="setting BootOrder")
    return tuple(found[label] for label in wanted)


def _create(efivars: Path, want: WantedEntry, esp: EspLocation) -> None:
    used = {int(m[1], 16) for p in efivars.iterdir() if (m := _BOOT_VAR.fullmatch(p.name))}
    number = min(set(range(0x10000)) - used)
    path = efivars / f"Boot{number:04X}-{EFI_GLOBAL_VARIABLE}"
    data = struct.pack("<I", NV_BS_RT) + encode_load_option(
        description=want.label, options=want.options, device_path=esp_device_path(
            partition=esp.number, partition_uuid=esp.partition_uuid, file_path=want.loader,
            start=esp.start, sectors=esp.sectors))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)  # efivarfs takes a variable in one write
        finally:
            os.close(fd)
    except OSError as e:
        raise UefiEntriesError(f"creating entry {want.label!r} as {path} failed: {e}") from e


def _efibootmgr(program: str, args: list[str | os.PathLike[str]], *, step: str) -> None:
    try:
        run([program, "--quiet", *args], timeout=60)
    except CommandError as e:
        raise UefiEntriesError(f"{step} failed: {e}") from e
