"""The lab's parts that need no VM: accelerator choice, console waits, ramdisk archives,
iPXE scripts, the HTTP server, UEFI variable stores, the CLI's disk syntax."""

from __future__ import annotations

import argparse
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab import (
    Accel,
    ConsoleTimeout,
    DiskInterface,
    HttpServer,
    IpxeBoot,
    Lab,
    LabError,
    VmExited,
    detect_accelerator,
    write_ipxe_script,
)
from lab.accel import kvm_unusable_reason
from lab.commands import parse_disk
from lab.console import Console, readable
from lab.efivars import boot_config, read_variables
from lab.httpd import parse_range

# -- accelerator -----------------------------------------------------------------------------


def test_override_wins() -> None:
    assert detect_accelerator(environ={"KILN_LAB_ACCEL": "kvm"}) is Accel.KVM
    assert detect_accelerator(environ={"KILN_LAB_ACCEL": " TCG "}) is Accel.TCG
    with pytest.raises(LabError, match="KILN_LAB_ACCEL='hvf': expected one of kvm, tcg"):
        detect_accelerator(environ={"KILN_LAB_ACCEL": "hvf"})


def test_kvm_unusable_reasons(tmp_path: Path) -> None:
    modules = tmp_path / "module"
    modules.mkdir()
    assert "cannot open" in (kvm_unusable_reason(device=tmp_path / "kvm", modules=modules) or "")
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    assert kvm_unusable_reason(device=device, modules=modules) is None
    (modules / "kvm_pvm").mkdir()
    assert "kvm_pvm" in (kvm_unusable_reason(device=device, modules=modules) or "")


def test_this_host_runs_tcg() -> None:
    if kvm_unusable_reason() is None:
        pytest.skip("KVM may work here; only the probe boot can tell")
    assert detect_accelerator(environ={}) is Accel.TCG
    lab = Lab.detect(environ={})
    assert lab.accel is Accel.TCG
    assert lab.scale(10) == 10


def test_lab_keep_from_the_environment() -> None:
    assert Lab.detect(environ={"KILN_LAB_ACCEL": "tcg", "KILN_LAB_KEEP": "1"}).keep
    assert not Lab.detect(environ={"KILN_LAB_ACCEL": "tcg", "KILN_LAB_KEEP": "0"}).keep
    kvm = Lab.detect(environ={"KILN_LAB_ACCEL": "kvm"})
    assert kvm.scale(10) == pytest.approx(3.0)


# -- console ---------------------------------------------------------------------------------


def test_wait_for_follows_the_console_in_order(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"boot 1\nLAB-OK one\nLAB-OK two\n")
    console = Console(log)
    running: list[int | None] = [None]
    assert console.wait_for(r"LAB-OK (\w+)", timeout=1, exit_status=lambda: running[0])[1] == "one"
    assert console.wait_for(r"LAB-OK (\w+)", timeout=1, exit_status=lambda: running[0])[1] == "two"

    def later() -> None:
        time.sleep(0.3)
        with log.open("ab") as handle:
            handle.write("LAB-OK thr\xe9e\n".encode())

    writer = threading.Thread(target=later)
    writer.start()
    match = console.wait_for(r"LAB-OK (\S+)", timeout=5, exit_status=lambda: running[0])
    writer.join()
    assert match[1] == "thr\xe9e"
    again = console.wait_for(r"LAB-OK (\w+)", timeout=1, exit_status=lambda: running[0],
                             from_start=True)
    assert again[1] == "one"


def test_wait_for_timeout_quotes_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    console = Console(log)
    started = time.monotonic()
    with pytest.raises(ConsoleTimeout) as error:
        console.wait_for("never", timeout=0.3, exit_status=lambda: None)
    assert time.monotonic() - started < 2
    message = str(error.value)
    assert "did not show 'never' within 0.3 s" in message
    assert "line 99" in message and "line 70" in message and "line 69" not in message


def test_wait_for_stops_when_qemu_is_gone(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("Kernel panic - not syncing\n")
    console = Console(log)
    started = time.monotonic()
    with pytest.raises(VmExited) as error:
        console.wait_for("LAB-OK", timeout=60, exit_status=lambda: 1,
                         describe_exit=lambda: "\n--- QEMU stderr ---\nboom")
    assert time.monotonic() - started < 2
    assert "QEMU exited (status 1)" in str(error.value)
    assert "Kernel panic" in str(error.value) and "boom" in str(error.value)
    # What QEMU wrote before it exited still counts.
    assert console.wait_for("panic", timeout=1, exit_status=lambda: 1, from_start=True)


def test_readable_drops_terminal_control() -> None:
    assert readable("\x1b[2J\x1b[01;01H\x1b[=3hiPXE\r\nwait\x08 \x08\x08 \x08ok") == "iPXE\nwaitok"


# -- ramdisks --------------------------------------------------------------------------------


# -- PXE -------------------------------------------------------------------------------------


def test_ipxe_script_is_the_documented_one(tmp_path: Path) -> None:
    boot = IpxeBoot(base_url="http://10.0.2.2:8080",
                    cmdline="mfgurl=http://10.0.2.2:8080/manufData.json")
    path = write_ipxe_script(tmp_path / "tftp", boot)
    assert path == tmp_path / "tftp" / "boot.ipxe"
    assert path.read_text() == (
        "#!ipxe\n"
        "kernel http://10.0.2.2:8080/vmlinuz initrd=initrd.zst console=ttyS0 "
        "mfgurl=http://10.0.2.2:8080/manufData.json\n"
        "initrd --name initrd.zst http://10.0.2.2:8080/initrd.zst\n"
        "boot\n"
    )
    other = IpxeBoot(base_url="http://10.0.2.2:9/", kernel="k/bzImage", initrd="rd/initrd.gz")
    assert other.script().splitlines()[1:3] == [
        "kernel http://10.0.2.2:9/k/bzImage initrd=initrd.gz console=ttyS0",
        "initrd --name initrd.gz http://10.0.2.2:9/rd/initrd.gz",
    ]
    with pytest.raises(LabError, match="single lines"):
        IpxeBoot(base_url="http://x", cmdline="a\nshell")


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET"
         ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_http_server_serves_files_and_ranges(tmp_path: Path) -> None:
    body = bytes(range(256)) * 4
    (tmp_path / "initrd.zst").write_bytes(body)
    with HttpServer(tmp_path) as http:
        assert http.guest_url == f"http://10.0.2.2:{http.port}"
        url = f"{http.url}/initrd.zst"
        status, headers, data = _get(url)
        assert (status, data, headers["Accept-Ranges"]) == (200, body, "bytes")
        status, headers, data = _get(url, {"Range": "bytes=10-19"})
        assert (status, data, headers["Content-Range"]) == (206, body[10:20], "bytes 10-19/1024")
        assert _get(url, {"Range": "bytes=1000-"})[2] == body[1000:]
        assert _get(url, {"Range": "bytes=-4"})[2] == body[-4:]
        assert _get(url, {"Range": "bytes=0-99999"})[2] == body
        status, headers, _ = _get(url, {"Range": "bytes=2000-"})
        assert (status, headers["Content-Range"]) == (416, "bytes */1024")
        assert _get(url, {"Range": "bytes=0-1,5-6"})[0] == 200  # several ranges: whole file
        status, headers, data = _get(url, method="HEAD")
        assert (status, headers["Content-Length"], data) == (200, "1024", b"")
        assert _get(f"{http.url}/missing")[0] == 404
        assert _get(f"{http.url}/../etc/passwd")[0] == 404
        assert http.requests[:2] == ["/initrd.zst", "/initrd.zst"]
        source = tmp_path / "elsewhere.bin"
        source.write_bytes(b"k")
        assert http.publish(source, "vmlinuz") == f"{http.guest_url}/vmlinuz"
        assert _get(f"{http.url}/vmlinuz")[2] == b"k"
    with pytest.raises(OSError):  # noqa: PT011 - the server is gone: any refusal
        _get(url)


def test_parse_range() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=5-", 10) == (5, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("bytes=10-", 10) is None
    assert parse_range("bytes=-0", 10) is None
    with pytest.raises(ValueError, match="items"):
        parse_range("items=0-1", 10)


# -- UEFI variables, CLI ---------------------------------------------------------------------


def test_pristine_ovmf_vars_have_no_boot_entries(tmp_path: Path) -> None:
    template = Path("/usr/share/OVMF/OVMF_VARS.fd")
    if not template.exists():
        pytest.skip("OVMF is not installed")
    config = boot_config(template)
    assert (config.order, config.entries) == ((), ())
    assert read_variables(template) == []
    (tmp_path / "junk").write_bytes(b"\0" * 4096)
    with pytest.raises(LabError, match="not a UEFI variable store"):
        read_variables(tmp_path / "junk")


def test_cli_disk_syntax() -> None:
    assert parse_disk("8G").size == 8 << 30
    assert parse_disk("8G").interface is DiskInterface.VIRTIO
    nvme = parse_disk("512M:nvme")
    assert (nvme.size, nvme.interface) == (512 << 20, DiskInterface.NVME)
    assert parse_disk("1GiB:AHCI").interface is DiskInterface.AHCI
    for bad in ("", "0", "12Q", "1G:scsi"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_disk(bad)
