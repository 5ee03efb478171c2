"""Hardware validation: does this unit match its variant in manufData?

`validate(manufdata, inventory)` finds the variant (`ManufData.variant_for` on the DMI
values; none → one mismatch listing the values seen and every variant's patterns) and runs
every check of it, collecting ALL mismatches, never stopping at the first. Rules:

- **CPU**: the model glob (case-sensitive, as DMI globs are), physical cores within
  min..max, sockets exact, every listed flag present.
- **Memory** within +/- `tolerance_percent` of `size_bytes` (`Inventory.memory_bytes`).
- **Disks**: a disk fits a spec by transport, size range and model glob. Kiln writes to
  primary, recovery and data disks, so a USB or removable disk never fits those roles
  unless the spec's transport is usb, and a read-only disk never does. Each disk serves at
  most one spec; specs with the fewest fitting disks choose first, and each takes the disks
  that fit the fewest other specs. Counts are exact: a spec fails when it got fewer than
  `count` disks or when an unclaimed disk also fits it.
- **NICs**: the number of physical NICs is exact; every MAC starts with an allowed OUI.
  (manufData schema 1 has no "sequential MACs" rule, so none is checked.)
- **PCI/USB**: exactly `count` devices with each vendor:device id.
- A unit without a real serial (see `provision.inventory`) fails with a `serial` mismatch.

The result names the disks manufacture uses: `primary_disk`, `recovery_disk` (only when
the variant has a separate recovery disk) and `data_disks`; they are None/empty unless the
validation passed. `Validation.report()` puts the whole detected inventory next to the spec.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kiln.manufdata import DiskRole, DiskSpec, ManufData, Transport, Variant
from provision import describe
from provision.inventory import Disk, DiskTransport, Inventory, serial_problem
from provision.report import render_report

WRITTEN_ROLES = frozenset({DiskRole.PRIMARY, DiskRole.RECOVERY, DiskRole.DATA})


@dataclass(frozen=True, kw_only=True)
class Mismatch:
    what: str  # where in the variant: "memory", "disks[0]", "nics", "pci[1]", "variant"
    expected: str  # the spec, as text
    found: str  # what was detected, as text

    def __str__(self) -> str:
        return f"{self.what}: expected {self.expected}; found {self.found}"


@dataclass(frozen=True, kw_only=True)
class DiskAssignment:
    spec: DiskSpec
    disks: tuple[Disk, ...]  # the disks claimed by the spec
    extra: tuple[Disk, ...]  # disks that fit the spec too but were left unclaimed

    @property
    def ok(self) -> bool:
        return len(self.disks) == self.spec.count and not self.extra


@dataclass(frozen=True, kw_only=True)
class Validation:
    inventory: Inventory
    variant: Variant | None
    mismatches: tuple[Mismatch, ...]
    disk_assignments: tuple[DiskAssignment, ...]  # in the order of the variant's disk specs
    primary_disk: Disk | None
    recovery_disk: Disk | None  # None: RECOVERY shares the primary disk
    data_disks: tuple[Disk, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(str(mismatch) for mismatch in self.mismatches)

    def report(self) -> str:
        """The verdict, every mismatch, then the detected inventory next to the spec."""
        return render_report(self)


def disk_misfits(spec: DiskSpec, disk: Disk) -> tuple[str, ...]:
    """Why `disk` does not fit `spec` (empty: it fits)."""
    reasons = []
    if spec.transport is not Transport.ANY and disk.transport.value != spec.transport.value:
        reasons.append(f"transport {disk.transport}")
    if disk.size_bytes < spec.min_size_bytes:
        reasons.append(f"{disk.size_bytes} bytes < {spec.min_size_bytes}")
    if spec.max_size_bytes is not None and disk.size_bytes > spec.max_size_bytes:
        reasons.append(f"{disk.size_bytes} bytes > {spec.max_size_bytes}")
    if spec.model is not None and not fnmatch.fnmatchcase(disk.model, spec.model):
        reasons.append(f"model {disk.model!r}")
    if spec.role in WRITTEN_ROLES:
        if spec.transport is not Transport.USB and (
                disk.transport is DiskTransport.USB or disk.removable):
            reasons.append(f"usb/removable: never a {spec.role} disk unless the spec's "
                           "transport is usb")
        if disk.read_only:
            reasons.append("read-only")
    return tuple(reasons)


def assign_disks(specs: Sequence[DiskSpec], disks: Sequence[Disk]) -> tuple[DiskAssignment, ...]:
    fitting = [[disk for disk in disks if not disk_misfits(spec, disk)] for spec in specs]

    def others_fitting(index: int, disk: Disk) -> int:
        return sum(disk in fits for other, fits in enumerate(fitting) if other != index)

    claimed: dict[int, tuple[Disk, ...]] = {}
    used: set[str] = set()
    for index in sorted(range(len(specs)), key=lambda i: len(fitting[i])):
        free = sorted((disk for disk in fitting[index] if disk.name not in used),
                      key=lambda disk: (others_fitting(index, disk), disk.name))
        claimed[index] = tuple(free[:specs[index].count])
        used.update(disk.name for disk in claimed[index])
    return tuple(DiskAssignment(spec=spec, disks=claimed[index],
                                extra=tuple(d for d in fitting[index] if d.name not in used))
                 for index, spec in enumerate(specs))


def _disk_mismatches(assignments: Sequence[DiskAssignment],
                     disks: Sequence[Disk]) -> Iterator[Mismatch]:
    for index, assignment in enumerate(assignments):
        if assignment.ok:
            continue
        fits = assignment.disks + assignment.extra
        found = [f"{len(fits)} fitting" + (": " + ", ".join(d.name for d in fits) if fits
                                           else "")]
        found.extend(f"{describe.disk(disk)}: {'; '.join(disk_misfits(assignment.spec, disk))}"
                     for disk in disks if disk not in fits and disk_misfits(assignment.spec,
                                                                            disk))
        yield Mismatch(what=f"disks[{index}]", expected=describe.disk_spec(assignment.spec),
                       found="; ".join(found) if disks else "no disks at all")


def _cpu_mismatches(variant: Variant, inventory: Inventory) -> Iterator[Mismatch]:
    spec, cpu = variant.cpu, inventory.cpu
    if spec is None:
        return
    if spec.model is not None and not fnmatch.fnmatchcase(cpu.model, spec.model):
        yield Mismatch(what="cpu.model", expected=repr(spec.model), found=repr(cpu.model))
    low, high = spec.min_cores or 1, spec.max_cores
    if cpu.cores < low or (high is not None and cpu.cores > high):
        yield Mismatch(what="cpu.cores", expected=f"{low}..{high or 'any'} physical cores",
                       found=f"{cpu.cores} cores ({cpu.threads} threads)")
    if spec.sockets is not None and cpu.sockets != spec.sockets:
        yield Mismatch(what="cpu.sockets", expected=f"{spec.sockets} socket(s)",
                       found=f"{cpu.sockets} socket(s)")
    missing = [flag for flag in spec.flags if flag not in cpu.flags]
    if missing:
        yield Mismatch(what="cpu.flags", expected="flags " + " ".join(spec.flags),
                       found="missing " + " ".join(missing))


def _memory_mismatches(variant: Variant, inventory: Inventory) -> Iterator[Mismatch]:
    if variant.memory is not None and not variant.memory.accepts(inventory.memory_bytes):
        yield Mismatch(what="memory", expected=describe.memory_spec(variant.memory),
                       found=describe.memory(inventory))


def _device_mismatches(variant: Variant, inventory: Inventory) -> Iterator[Mismatch]:
    if variant.nics is not None:
        spec, nics = variant.nics, inventory.nics
        listed = ", ".join(describe.nic(nic) for nic in nics) or "none"
        if len(nics) != spec.count:
            yield Mismatch(what="nics", expected=describe.nic_spec(spec),
                           found=f"{len(nics)}: {listed}")
        foreign = [describe.nic(nic) for nic in nics if not spec.accepts_mac(nic.mac)]
        if foreign:
            yield Mismatch(what="nics.mac_ouis", expected=f"MACs from {', '.join(spec.mac_ouis)}",
                           found="other OUI: " + ", ".join(foreign))
    for index, pci in enumerate(variant.pci):
        matching = [d for d in inventory.pci if (d.vendor_id, d.device_id) ==
                    (pci.vendor_id, pci.device_id)]
        if len(matching) != pci.count:
            yield Mismatch(what=f"pci[{index}]", expected=describe.pci_spec(pci),
                           found=f"{len(matching)}" + "".join(f" {d.address}" for d in matching))
    for index, usb in enumerate(variant.usb):
        count = sum((d.vendor_id, d.product_id) == (usb.vendor_id, usb.product_id)
                    for d in inventory.usb)
        if count != usb.count:
            yield Mismatch(what=f"usb[{index}]", expected=describe.usb_spec(usb),
                           found=str(count))


def _no_variant(manufdata: ManufData, inventory: Inventory) -> Mismatch:
    seen = ", ".join(f"{name}={value!r}" for name, value in inventory.dmi.items()
                     if not name.endswith(("_serial", "_uuid"))) or "no DMI values at all"
    return Mismatch(what="variant", found=seen, expected="one of: " + "; ".join(
        describe.variant_line(variant) for variant in manufdata.variants))


def validate(manufdata: ManufData, inventory: Inventory) -> Validation:
    """Every mismatch between the unit and its variant (see the module's rules)."""
    variant = manufdata.variant_for(inventory.dmi)
    mismatches: list[Mismatch] = []
    if inventory.serial is None:
        mismatches.append(Mismatch(what="serial", expected="a real serial number",
                                   found=serial_problem(inventory.dmi)))
    if variant is None:
        mismatches.append(_no_variant(manufdata, inventory))
        return Validation(inventory=inventory, variant=None, mismatches=tuple(mismatches),
                          disk_assignments=(), primary_disk=None, recovery_disk=None,
                          data_disks=())
    assignments = assign_disks(variant.disks, inventory.disks)
    mismatches.extend(_cpu_mismatches(variant, inventory))
    mismatches.extend(_memory_mismatches(variant, inventory))
    mismatches.extend(_disk_mismatches(assignments, inventory.disks))
    mismatches.extend(_device_mismatches(variant, inventory))

    def chosen(role: DiskRole) -> tuple[Disk, ...]:
        if mismatches:
            return ()
        return tuple(disk for a in assignments if a.spec.role is role for disk in a.disks)

    return Validation(inventory=inventory, variant=variant, mismatches=tuple(mismatches),
                      disk_assignments=assignments,
                      primary_disk=next(iter(chosen(DiskRole.PRIMARY)), None),
                      recovery_disk=next(iter(chosen(DiskRole.RECOVERY)), None),
                      data_disks=chosen(DiskRole.DATA))
