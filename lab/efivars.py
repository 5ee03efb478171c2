"""Read an OVMF variable store file from the host: the boot entries and BootOrder a VM left.

The file (`OVMF_VARS.fd`, one per VM) is a firmware volume holding EDK2's variable store: a
list of variable headers (authenticated or plain format), each followed by its UTF-16 name
and its data. Old versions of a variable stay in the file marked deleted until the firmware
reclaims space, so only variables in the "added" state count.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
_AUTHENTICATED_STORE = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
_PLAIN_STORE = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
_FV_SIGNATURE = b"_FVH"
_START_ID = 0x55AA
_VAR_ADDED = 0x3F
_VAR_ADDED_IN_DELETED_TRANSITION = 0x3E
_STORE_HEADER = struct.Struct("<16sIBBHI")
# StartId, State, Reserved, Attributes, [MonotonicCount, TimeStamp, PubKeyIndex,]
# NameSize, DataSize, VendorGuid
_AUTH_HEADER = struct.Struct("<HBBIQ16sIII16s")
_PLAIN_HEADER = struct.Struct("<HBBIII16s")
_LOAD_OPTION_ACTIVE = 0x1
_MEDIA_FILE_PATH = (0x04, 0x04)


@dataclass(frozen=True)
class EfiVariable:
    name: str
    vendor: uuid.UUID
    attributes: int
    data: bytes


@dataclass(frozen=True)
class BootEntry:
    number: int  # the #### of Boot####
    description: str
    active: bool
    file_path: str | None  # the device path's file part (e.g. \EFI\BOOT\BOOTX64.EFI), if any
    device_path: bytes


@dataclass(frozen=True)
class BootConfig:
    order: tuple[int, ...]  # BootOrder
    entries: tuple[BootEntry, ...]  # every Boot#### variable, by number

    def entry(self, number: int) -> BootEntry:
        for entry in self.entries:
            if entry.number == number:
                return entry
        raise LabError(f"no Boot{number:04X} variable")

    def ordered(self) -> list[BootEntry]:
        """The entries in BootOrder (numbers without a variable are skipped)."""
        by_number = {e.number: e for e in self.entries}
        return [by_number[n] for n in self.order if n in by_number]


def _utf16(data: bytes) -> str:
    return data.decode("utf-16-le", errors="replace").split("\0", 1)[0]


def read_variables(path: Path) -> list[EfiVariable]:
    """The live variables in an OVMF variable store file."""
    data = path.read_bytes()
    if data[40:44] != _FV_SIGNATURE:
        raise LabError(f"{path} is not a UEFI variable store (no firmware volume header)")
    offset = struct.unpack_from("<H", data, 48)[0]
    guid, size, *_ = _STORE_HEADER.unpack_from(data, offset)
    store = uuid.UUID(bytes_le=guid)
    if store not in (_AUTHENTICATED_STORE, _PLAIN_STORE):
        raise LabError(f"{path}: unknown variable store format {store}")
    header = _AUTH_HEADER if store == _AUTHENTICATED_STORE else _PLAIN_HEADER
    end = min(offset + size, len(data))
    position = offset + _STORE_HEADER.size
    variables: list[EfiVariable] = []
    while position + header.size <= end:
        fields = header.unpack_from(data, position)
        start_id, state, attributes = fields[0], fields[1], fields[3]
        name_size, data_size, vendor = fields[-3], fields[-2], fields[-1]
        if start_id != _START_ID:
            break
        name_start = position + header.size
        value_start = name_start + name_size
        if state in (_VAR_ADDED, _VAR_ADDED_IN_DELETED_TRANSITION):
            variables.append(EfiVariable(
                name=_utf16(data[name_start:value_start]), vendor=uuid.UUID(bytes_le=vendor),
                attributes=attributes, data=data[value_start:value_start + data_size],
            ))
        position = value_start + data_size
        position += -position % 4
    return variables


def _file_path(device_path: bytes) -> str | None:
    position = 0
    while position + 4 <= len(device_path):
        kind, subtype, length = struct.unpack_from("<BBH", device_path, position)
        if (kind, subtype) == _MEDIA_FILE_PATH:
            return _utf16(device_path[position + 4:position + length])
        if kind == 0x7F or length < 4:  # end of the device path
            return None
        position += length
    return None


def _boot_entry(number: int, value: bytes) -> BootEntry:
    attributes, path_length = struct.unpack_from("<IH", value)
    description_end = 6
    while description_end + 1 < len(value) and value[description_end:description_end + 2] != (
            b"\0\0"):
        description_end += 2
    device_path = value[description_end + 2:description_end + 2 + path_length]
    return BootEntry(
        number=number, description=_utf16(value[6:description_end]),
        active=bool(attributes & _LOAD_OPTION_ACTIVE), file_path=_file_path(device_path),
        device_path=device_path,
    )


def boot_config(path: Path) -> BootConfig:
    """BootOrder and the Boot#### entries stored in an OVMF variable store file."""
    order: tuple[int, ...] = ()
    entries: dict[int, BootEntry] = {}
    for variable in read_variables(path):
        if variable.vendor != EFI_GLOBAL_VARIABLE:
            continue
        if variable.name == "BootOrder":
            count = len(variable.data) // 2
            order = struct.unpack_from(f"<{count}H", variable.data)
        elif len(variable.name) == 8 and variable.name.startswith("Boot"):
            try:
                number = int(variable.name[4:], 16)
            except ValueError:
                continue
            entries[number] = _boot_entry(number, variable.data)
    return BootConfig(order=order, entries=tuple(entries[n] for n in sorted(entries)))
