"""The validation report: a text block for the console and the server log that puts the
whole detected inventory next to the variant's spec ("A mismatch reports the whole detected
inventory next to the spec"). Layout, one section per part of the spec:

    Hardware validation FAILED: 2 mismatch(es), variant qemu-lab
      memory: expected ...; found ...
    dmi:     <every DMI value read>
    cpu:     spec  <spec or "not checked">
             found <detected>
    disks:   spec  disks[0] <spec> -> <the disks it claimed>
             found <every disk>
    ...

Every detected device is listed whether or not the spec names it, so the log alone is enough
to write or fix a variant.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING

from provision import describe

if TYPE_CHECKING:
    from provision.validate import Validation

INDENT = "         "  # under the section name


def _section(name: str, *, spec: Iterable[str], found: Iterable[str]) -> list[str]:
    rows = [f"spec  {line}" for line in spec] or ["spec  not checked"]
    rows += [f"found {line}" for line in found] or ["found none"]
    head = f"{name + ':':<9}"
    return [(head if number == 0 else INDENT) + row for number, row in enumerate(rows)]


def render_report(validation: Validation) -> str:
    inventory, variant = validation.inventory, validation.variant
    name = variant.name if variant else "none matched"
    if validation.ok:
        lines = [f"Hardware validation passed: variant {name}, serial {inventory.serial}"]
    else:
        lines = [f"Hardware validation FAILED: {len(validation.mismatches)} mismatch(es), "
                 f"variant {name}, serial {inventory.serial or 'none'}"]
        lines += [f"  {problem}" for problem in validation.problems]
    lines += [f"{'dmi:':<9}" + (", ".join(f"{key}={value!r}" for key, value in
                                          inventory.dmi.items()) or "none")]
    if validation.ok:
        targets = [f"primary {validation.primary_disk.path}" if validation.primary_disk
                   else "", f"recovery {validation.recovery_disk.path}"
                   if validation.recovery_disk else "",
                   *(f"data {disk.path}" for disk in validation.data_disks)]
        lines.append(f"{'targets:':<9}" + ", ".join(t for t in targets if t))
    claimed = [f"disks[{index}] {describe.disk_spec(a.spec)} -> "
               + (", ".join(disk.name for disk in a.disks) or "nothing")
               for index, a in enumerate(validation.disk_assignments)]
    lines += _section("cpu", spec=[describe.cpu_spec(variant.cpu)] if variant and variant.cpu
                      else [], found=[describe.cpu(inventory.cpu), *textwrap.wrap(
                          "flags " + " ".join(inventory.cpu.flags), width=84)])
    lines += _section("memory", spec=[describe.memory_spec(variant.memory)]
                      if variant and variant.memory else [],
                      found=[describe.memory(inventory)])
    lines += _section("disks", spec=claimed,
                      found=[describe.disk(disk) for disk in inventory.disks])
    lines += _section("nics", spec=[describe.nic_spec(variant.nics)]
                      if variant and variant.nics else [],
                      found=[describe.nic(nic) for nic in inventory.nics])
    lines += _section("pci", spec=[describe.pci_spec(s) for s in variant.pci] if variant
                      else [], found=[describe.pci(device) for device in inventory.pci])
    lines += _section("usb", spec=[describe.usb_spec(s) for s in variant.usb] if variant
                      else [], found=[describe.usb(device) for device in inventory.usb])
    return "\n".join(lines) + "\n"
