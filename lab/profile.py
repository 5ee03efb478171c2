"""manufData for a lab VM: what `kiln lab profile` prints and the QEMU manufacture tests use.

One variant, `qemu-lab`, matching the lab's default SMBIOS ("Kiln Lab" / "Lab Appliance"):
memory ± 10 %, one primary disk within a size range, one NIC; files: the image (from the
server's store, `images/ID.upd`) and the Kiln kernel and ramdisk as boot files
(`files/vmlinuz`, `files/initrd.zst`), each with its size and sha256 computed here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB, GIB = 1024**2, 1024**3


@dataclass(frozen=True, kw_only=True)
class LabUnit:
    memory_bytes: int = GIB
    disk_min_bytes: int = 3 * GIB
    disk_max_bytes: int = 5 * GIB
    recovery_bytes: int = 512 * MIB
    data_bytes: int | None = None  # a DATA partition of this size after PRIMARY


def file_spec(path: Path, url: str, destination: str, kind: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return {"url": url, "sha256": digest.hexdigest(), "size_bytes": path.stat().st_size,
            "destination": destination, "kind": kind}


def lab_manufdata(*, image: Path, image_id: str, kernel: Path, initrd: Path,
                  unit: LabUnit | None = None, product: str = "demo") -> dict[str, Any]:
    unit = unit or LabUnit()
    return {
        "schema": 1, "product": product,
        "files": [file_spec(image, f"images/{image_id}.upd", f"Image/{image.name}", "image"),
                  file_spec(kernel, "files/vmlinuz", "boot/vmlinuz", "kernel"),
                  file_spec(initrd, "files/initrd.zst", "boot/initrd.zst", "initrd")],
        "variants": [{
            "name": "qemu-lab",
            "dmi": {"sys_vendor": "Kiln Lab", "product_name": "Lab Appliance"},
            "memory": {"size_bytes": unit.memory_bytes, "tolerance_percent": 10},
            "disks": [{"role": "primary", "min_size_bytes": unit.disk_min_bytes,
                       "max_size_bytes": unit.disk_max_bytes}],
            "nics": {"count": 1},
        }],
        "layout": {"firmware": "auto", "recovery_size_bytes": unit.recovery_bytes}
        | ({"data_size_bytes": unit.data_bytes} if unit.data_bytes is not None else {}),
    }
