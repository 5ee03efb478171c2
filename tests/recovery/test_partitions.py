"""Planning the disk layout: pure, so every case is a plain unit test."""

from __future__ import annotations

import itertools
import uuid

import pytest

from kiln.manufdata import GIB, MIB, MIN_PRIMARY_BYTES, DiskLayout, DiskRole, Firmware, RecoveryDisk
from recovery.partitions import (
    ESP_TYPE_GUID,
    LINUX_FS_TYPE_GUID,
    Filesystem,
    LayoutError,
    NewUuid,
    PartitionPlan,
    PartitionRole,
    TableType,
    TargetDisk,
    node_name,
    plan_layout,
)

R = PartitionRole


def counter_uuids() -> NewUuid:
    numbers = itertools.count(1)
    return lambda: uuid.UUID(int=next(numbers) * 0x0101_0101_0101_0101_0101_0101_0101_0101)


def disk(size: int, *, name: str = "/dev/sda", sector_size: int = 512) -> TargetDisk:
    return TargetDisk(name=name, size_bytes=size, sector_size=sector_size)


def layout(**overrides: object) -> DiskLayout:
    values: dict[str, object] = {"recovery_size_bytes": 512 * MIB}
    values.update(overrides)
    return DiskLayout(**values)  # type: ignore[arg-type]


def check_geometry(plan: PartitionPlan) -> None:
    """Aligned to 1 MiB, in order, no overlaps, inside the disk, GPT backup room kept."""
    align = MIB // plan.sector_size
    previous_end = align - 1  # the first MiB is the gap
    for number, partition in enumerate(plan.partitions, start=1):
        assert partition.number == number
        assert partition.start % align == 0
        assert (partition.end + 1) % align == 0
        assert partition.start > previous_end
        assert partition.end >= partition.start
        previous_end = partition.end
    backup = 1 + 16384 // plan.sector_size if plan.table is TableType.GPT else 0
    assert previous_end <= plan.disk_sectors - 1 - backup


def test_uefi_single_disk() -> None:
    (plan,) = plan_layout(layout(), firmware=Firmware.UEFI, primary=disk(4 * GIB),
                          new_uuid=counter_uuids())
    assert plan.table is TableType.GPT
    assert plan.disk_role is DiskRole.PRIMARY
    assert [p.role for p in plan.partitions] == [R.ESP, R.RECOVERY, R.PRIMARY]
    esp, recovery, primary = plan.partitions
    assert esp.start == 2048 and plan.size_bytes(esp) == 256 * MIB
    assert (esp.filesystem, esp.label, esp.type_guid) == (Filesystem.VFAT, "KILN-ESP",
                                                          ESP_TYPE_GUID)
    assert plan.size_bytes(recovery) == 512 * MIB
    assert (recovery.filesystem, recovery.label, recovery.type_guid) == (
        Filesystem.EXT4, "RECOVERY", LINUX_FS_TYPE_GUID)
    assert (primary.label, primary.type_guid) == ("PRIMARY", LINUX_FS_TYPE_GUID)
    assert not any(p.bootable for p in plan.partitions)
    assert all(p.mbr_type is None for p in plan.partitions)
    # PRIMARY takes the rest, up to the last whole MiB before GPT's backup.
    assert primary.end == 4 * GIB // 512 - 2048 - 1
    check_geometry(plan)


def test_identifiers_are_fresh_and_in_the_form_tools_print() -> None:
    (plan,) = plan_layout(layout(data_size_bytes=GIB), firmware=Firmware.UEFI,
                          primary=disk(4 * GIB), new_uuid=counter_uuids())
    ids = [plan.disk_id] + [p.partition_uuid for p in plan.partitions] + \
        [p.filesystem_uuid for p in plan.partitions]
    assert len(set(ids)) == len(ids)
    assert plan.disk_id == str(uuid.UUID(int=0x0101_0101_0101_0101_0101_0101_0101_0101))
    assert plan.partitions[0].filesystem_uuid == "0303-0303"  # vfat: low 32 bits, XXXX-XXXX
    assert plan.partitions[1].filesystem_uuid == str(uuid.UUID(int=5 * 0x0101_0101_0101_0101
                                                               * (2**64 + 1)))


def test_same_factory_gives_the_same_plan() -> None:
    def make() -> tuple[PartitionPlan, ...]:
        return plan_layout(layout(), firmware=Firmware.UEFI, primary=disk(4 * GIB),
                           new_uuid=counter_uuids())

    assert make() == make()


def test_bios_single_disk() -> None:
    (plan,) = plan_layout(layout(data_size_bytes=GIB), firmware=Firmware.BIOS,
                          primary=disk(4 * GIB), new_uuid=counter_uuids())
    assert plan.table is TableType.MSDOS
    assert [p.role for p in plan.partitions] == [R.RECOVERY, R.PRIMARY, R.DATA]
    recovery, primary, data = plan.partitions
    assert recovery.start == 2048  # the BIOS gap: the first MiB
    assert recovery.bootable and not primary.bootable and not data.bootable
    assert all(p.type_guid is None and p.mbr_type == "83" for p in plan.partitions)
    assert len(plan.disk_id) == 8 and int(plan.disk_id, 16) >= 0
    assert [p.partition_uuid for p in plan.partitions] == [
        f"{plan.disk_id}-01", f"{plan.disk_id}-02", f"{plan.disk_id}-03"]
    # MBR needs no backup room: the last MiB of the disk is used.
    assert data.end == 4 * GIB // 512 - 1
    check_geometry(plan)


def test_firmware_in_the_layout_does_not_matter_once_resolved() -> None:
    (bios,) = plan_layout(layout(firmware=Firmware.UEFI), firmware=Firmware.BIOS,
                          primary=disk(4 * GIB), new_uuid=counter_uuids())
    assert bios.partition(R.ESP) is None


def test_auto_firmware_must_be_resolved() -> None:
    with pytest.raises(ValueError, match="resolve firmware"):
        plan_layout(layout(), firmware=Firmware.AUTO, primary=disk(4 * GIB),
                    new_uuid=counter_uuids())


def test_data_fixed_follows_primary_which_takes_the_rest() -> None:
    (plan,) = plan_layout(layout(data_size_bytes=GIB), firmware=Firmware.UEFI,
                          primary=disk(8 * GIB), new_uuid=counter_uuids())
    primary, data = plan.partition(R.PRIMARY), plan.partition(R.DATA)
    assert primary is not None and data is not None
    assert plan.size_bytes(data) == GIB
    assert data.start == primary.end + 1
    assert data.end == 8 * GIB // 512 - 2048 - 1
    check_geometry(plan)


def test_data_takes_the_rest_after_a_fixed_primary() -> None:
    (plan,) = plan_layout(layout(primary_size_bytes=2 * GIB, data_size_bytes=0),
                          firmware=Firmware.UEFI, primary=disk(8 * GIB),
                          new_uuid=counter_uuids())
    primary, data = plan.partition(R.PRIMARY), plan.partition(R.DATA)
    assert primary is not None and data is not None
    assert plan.size_bytes(primary) == 2 * GIB
    assert data.end == 8 * GIB // 512 - 2048 - 1
    check_geometry(plan)


def test_no_data_and_fixed_primary_leaves_the_rest_free() -> None:
    (plan,) = plan_layout(layout(primary_size_bytes=2 * GIB), firmware=Firmware.BIOS,
                          primary=disk(8 * GIB), new_uuid=counter_uuids())
    assert plan.partition(R.DATA) is None
    assert plan.size_bytes(plan.partitions[-1]) == 2 * GIB
    check_geometry(plan)


def test_sizes_round_up_to_whole_mib() -> None:
    (plan,) = plan_layout(layout(recovery_size_bytes=512 * MIB + 1), firmware=Firmware.BIOS,
                          primary=disk(4 * GIB), new_uuid=counter_uuids())
    recovery = plan.partition(R.RECOVERY)
    assert recovery is not None and plan.size_bytes(recovery) == 513 * MIB


def test_separate_recovery_disk_gives_two_plans() -> None:
    plans = plan_layout(layout(recovery_disk=RecoveryDisk.SEPARATE, data_size_bytes=GIB),
                        firmware=Firmware.UEFI, primary=disk(8 * GIB, name="/dev/nvme0n1"),
                        recovery=disk(GIB, name="/dev/sda"), new_uuid=counter_uuids())
    primary, recovery = plans
    assert (primary.disk, primary.disk_role) == ("/dev/nvme0n1", DiskRole.PRIMARY)
    assert [p.role for p in primary.partitions] == [R.PRIMARY, R.DATA]
    assert (recovery.disk, recovery.disk_role) == ("/dev/sda", DiskRole.RECOVERY)
    assert [p.role for p in recovery.partitions] == [R.ESP, R.RECOVERY]
    assert primary.disk_id != recovery.disk_id
    for plan in plans:
        assert plan.table is TableType.GPT
        check_geometry(plan)


def test_separate_recovery_disk_with_bios() -> None:
    primary, recovery = plan_layout(
        layout(recovery_disk=RecoveryDisk.SEPARATE), firmware=Firmware.BIOS,
        primary=disk(4 * GIB), recovery=disk(GIB, name="/dev/sdb"), new_uuid=counter_uuids())
    assert [(p.role, p.bootable) for p in recovery.partitions] == [(R.RECOVERY, True)]
    assert [(p.role, p.bootable) for p in primary.partitions] == [(R.PRIMARY, False)]


def test_separate_recovery_disk_must_be_given_exactly_when_asked() -> None:
    with pytest.raises(LayoutError, match="expected a separate recovery disk"):
        plan_layout(layout(recovery_disk=RecoveryDisk.SEPARATE), firmware=Firmware.UEFI,
                    primary=disk(4 * GIB), new_uuid=counter_uuids())
    with pytest.raises(LayoutError, match="expected no separate recovery disk"):
        plan_layout(layout(), firmware=Firmware.UEFI, primary=disk(4 * GIB),
                    recovery=disk(GIB), new_uuid=counter_uuids())


def test_too_small_disk_names_the_disk_its_size_and_the_need() -> None:
    with pytest.raises(LayoutError) as caught:
        plan_layout(layout(data_size_bytes=GIB), firmware=Firmware.UEFI,
                    primary=disk(2 * GIB, name="/dev/vda"), new_uuid=counter_uuids())
    message = str(caught.value)
    assert "/dev/vda" in message and str(2 * GIB) in message
    need = layout(firmware=Firmware.UEFI, data_size_bytes=GIB).minimum_disk_bytes(
        DiskRole.PRIMARY)
    assert f"needs at least {need} bytes" in message
    assert "ESP 268435456 bytes" in message and "DATA 1073741824 bytes" in message


def test_too_small_separate_recovery_disk() -> None:
    with pytest.raises(LayoutError, match=r"disk /dev/sdb \(268435456 bytes\) is too small "
                                          r"for the recovery disk"):
        plan_layout(layout(recovery_disk=RecoveryDisk.SEPARATE), firmware=Firmware.UEFI,
                    primary=disk(4 * GIB), recovery=disk(256 * MIB, name="/dev/sdb"),
                    new_uuid=counter_uuids())


def test_the_smallest_disk_the_layout_accepts_fits() -> None:
    for firmware in (Firmware.UEFI, Firmware.BIOS):
        shape = layout(firmware=firmware, data_size_bytes=GIB)
        need = shape.minimum_disk_bytes(DiskRole.PRIMARY)
        (plan,) = plan_layout(shape, firmware=firmware, primary=disk(need),
                              new_uuid=counter_uuids())
        primary = plan.partition(R.PRIMARY)
        assert primary is not None and plan.size_bytes(primary) >= MIN_PRIMARY_BYTES
        check_geometry(plan)


def test_fixed_sizes_past_what_mbr_addresses_are_refused() -> None:
    shape = layout(primary_size_bytes=3 * 1024 * GIB)
    with pytest.raises(LayoutError, match=r"an MBR \(BIOS\) table addresses only its first "
                                          r"2199023255552 bytes"):
        plan_layout(shape, firmware=Firmware.BIOS, primary=disk(4 * 1024 * GIB),
                    new_uuid=counter_uuids())
    (plan,) = plan_layout(shape, firmware=Firmware.UEFI, primary=disk(4 * 1024 * GIB),
                          new_uuid=counter_uuids())
    check_geometry(plan)


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_alignment_holds_for_both_sector_sizes(sector_size: int) -> None:
    for firmware in (Firmware.UEFI, Firmware.BIOS):
        (plan,) = plan_layout(layout(data_size_bytes=GIB + 12345), firmware=firmware,
                              primary=disk(5 * GIB + 4096 * 7, sector_size=sector_size),
                              new_uuid=counter_uuids())
        assert plan.sector_size == sector_size
        assert plan.partitions[0].start * sector_size == MIB
        check_geometry(plan)


def test_a_sector_size_that_does_not_divide_a_mib_is_refused() -> None:
    with pytest.raises(LayoutError, match="sector size 520"):
        plan_layout(layout(), firmware=Firmware.BIOS, primary=disk(4 * GIB, sector_size=520),
                    new_uuid=counter_uuids())


def test_mbr_cannot_address_past_2_tib() -> None:
    (plan,) = plan_layout(layout(), firmware=Firmware.BIOS, primary=disk(4 * 1024 * GIB),
                          new_uuid=counter_uuids())
    assert plan.partitions[-1].end < 2**32
    check_geometry(plan)


@pytest.mark.parametrize(("disk_name", "node"), [
    ("loop0", "loop0p1"), ("nvme0n1", "nvme0n1p1"), ("mmcblk0", "mmcblk0p1"),
    ("sda", "sda1"), ("vda", "vda1"),
])
def test_node_names(disk_name: str, node: str) -> None:
    assert node_name(disk_name, 1) == node
