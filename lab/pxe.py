"""PXE the way a factory line does it: DHCP and TFTP hand iPXE a script, iPXE fetches the
kernel and initramfs over HTTP.

In the lab QEMU's user-mode network plays DHCP and TFTP (`Nic(tftp=DIR, bootfile=…)`) and
`lab.httpd.HttpServer` plays the HTTP server. Both iPXE builds in QEMU's virtio-net ROM (legacy
and EFI) run the same script. `initrd=NAME` on the kernel line is what the EFI stub needs to
find the initramfs iPXE loaded under that name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.spec import Nic

BOOTFILE = "boot.ipxe"


@dataclass(frozen=True)
class IpxeBoot:
    """What iPXE loads: file names under the HTTP base URL and the kernel's arguments."""

    base_url: str  # e.g. http://10.0.2.2:8080 (`HttpServer.guest_url`)
    kernel: str = "vmlinuz"
    initrd: str = "initrd.zst"
    cmdline: str = ""  # after `console=…`, e.g. "mfgurl=http://10.0.2.2:8080/manufData.json"
    console: str = "ttyS0"
    extra: tuple[str, ...] = ()  # more iPXE lines before `kernel`

    def __post_init__(self) -> None:
        for text in (self.base_url, self.kernel, self.initrd, self.cmdline, self.console):
            if "\n" in text:
                raise LabError(f"iPXE script values are single lines: {text!r}")

    @property
    def initrd_name(self) -> str:
        return self.initrd.rsplit("/", 1)[-1]

    def script(self) -> str:
        base = self.base_url.rstrip("/")
        kernel_line = " ".join(filter(None, [
            f"kernel {base}/{self.kernel}", f"initrd={self.initrd_name}",
            f"console={self.console}" if self.console else "", self.cmdline,
        ]))
        return "".join(f"{line}\n" for line in [
            "#!ipxe", *self.extra, kernel_line,
            f"initrd --name {self.initrd_name} {base}/{self.initrd}", "boot",
        ])


def write_ipxe_script(tftp_dir: Path, boot: IpxeBoot, *, name: str = BOOTFILE) -> Path:
    """Write the script into the TFTP directory (created if needed); return its path."""
    tftp_dir.mkdir(parents=True, exist_ok=True)
    path = tftp_dir / name
    path.write_text(boot.script())
    return path


def pxe_nic(tftp_dir: Path, *, mac: str | None = None, bootfile: str = BOOTFILE) -> Nic:
    """A virtio NIC whose DHCP offers `bootfile` from `tftp_dir`."""
    return Nic(tftp=tftp_dir, bootfile=bootfile) if mac is None else Nic(
        mac=mac, tftp=tftp_dir, bootfile=bootfile)
