"""A running lab VM: QEMU started from a `VmSpec`, its console, QMP, and its cleanup.

    lab = Lab.detect()
    with lab.vm(VmSpec(boot=DirectKernel(kernel, initrd))) as vm:
        vm.wait_for(r"LAB-INIT-OK", timeout=60)

Leaving the block (normally or by an exception) kills QEMU, closes QMP and removes the work
dir, unless the VM keeps it (`keep=True`, `Lab(keep=True)` or `KILN_LAB_KEEP=1`), in which case
its path is logged. Files the caller named (disk images, `efi_vars`) are never removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from kiln.process import Spawned, run, spawn
from lab.accel import Accel, detect_accelerator
from lab.argv import QEMU, AttachedDisk, VmFiles, build_argv
from lab.console import POLL_SECONDS, Console, follow
from lab.errors import LabError
from lab.kernel import is_elf
from lab.qmp import Qmp
from lab.spec import DirectKernel, Disk, DiskFormat, Firmware, VmSpec

log = logging.getLogger(__name__)

ENV_KEEP = "KILN_LAB_KEEP"
_QCOW2_MAGIC = b"QFI\xfb"
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_STDERR_TAIL = 20


@dataclass(frozen=True)
class Lab:
    """The facts every VM of a run shares: the accelerator (and so the timeout factor),
    where work dirs go, whether they are kept, which QEMU binary runs."""

    accel: Accel
    base_dir: Path | None = None  # None: the system's temporary directory
    keep: bool = False
    qemu: str = QEMU

    @classmethod
    def detect(
        cls, *, base_dir: Path | None = None, keep: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Lab:
        """The accelerator this host really runs (or `KILN_LAB_ACCEL`); `keep` defaults
        to `KILN_LAB_KEEP=1`."""
        env = os.environ if environ is None else environ
        if keep is None:
            keep = env.get(ENV_KEEP, "") not in ("", "0")
        return cls(accel=detect_accelerator(environ=env), base_dir=base_dir, keep=keep)

    @property
    def timeout_factor(self) -> float:
        return self.accel.timeout_factor

    def scale(self, seconds: float) -> float:
        """A timeout written for TCG, for this lab's accelerator."""
        return seconds * self.timeout_factor

    def vm(self, spec: VmSpec, *, keep: bool | None = None) -> Vm:
        return Vm(spec, lab=self, keep=keep)


def disk_format(path: Path) -> DiskFormat:
    with path.open("rb") as handle:
        return DiskFormat.QCOW2 if handle.read(4) == _QCOW2_MAGIC else DiskFormat.RAW


class Vm:
    """One QEMU process and the files it uses. Start it with `with` (or `start()` and
    `close()`)."""

    def __init__(self, spec: VmSpec, *, lab: Lab | None = None, keep: bool | None = None):
        self.spec = spec
        self.lab = lab if lab is not None else Lab.detect()
        self.keep = self.lab.keep if keep is None else keep
        self._stack = contextlib.ExitStack()
        self._work_dir: Path | None = None
        self._files: VmFiles | None = None
        self._qemu: Spawned | None = None
        self._console: Console | None = None
        self._qmp: Qmp | None = None
        self.argv: list[str] = []

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Self:
        if self._qemu is not None:
            raise LabError("this VM was started already")
        try:
            self._check_inputs()
            work = Path(tempfile.mkdtemp(prefix="kiln-lab-", dir=self.lab.base_dir))
            self._work_dir = work
            self._stack.callback(self._remove_work_dir)
            self._files = self._prepare(work)
            self.argv = build_argv(self.spec, accel=self.lab.accel, files=self._files,
                                   qemu=self.lab.qemu)
            self._console = Console(self._files.console)
            self._qemu = self._stack.enter_context(spawn(self.argv))
        except BaseException:
            self.close()
            raise
        log.info("VM %s started (pid %d, %s) in %s", self.spec.smbios.serial,
                 self._qemu.process.pid, self.lab.accel.value, work)
        return self

    def close(self) -> None:
        """Kill QEMU if it still runs, close QMP, remove the work dir (unless kept)."""
        if self._qemu is not None and self._qemu.process.poll() is None:
            self._qemu.kill()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        self._stack.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_inputs(self) -> None:
        spec = self.spec
        if spec.firmware is Firmware.UEFI:
            for path in (spec.ovmf.code, spec.ovmf.vars_template):
                if not path.exists():
                    raise LabError(f"OVMF firmware {path} is missing (apt-get install ovmf)")
        if isinstance(spec.boot, DirectKernel):
            for file in (spec.boot.kernel, spec.boot.initrd):
                if file is not None and not file.is_file():
                    raise LabError(f"direct boot: {file} is not a file")
            if spec.firmware is Firmware.UEFI and is_elf(spec.boot.kernel):
                raise LabError(f"{spec.boot.kernel} is an ELF vmlinux, which boots only on "
                               "SeaBIOS (PVH entry); give OVMF the bzImage")
        for nic in spec.nics:
            if nic.tftp is not None and not nic.tftp.is_dir():
                raise LabError(f"TFTP directory {nic.tftp} does not exist")

    def _prepare(self, work: Path) -> VmFiles:
        sockets = work
        if len(os.fsencode(work / "console.sock")) > _UNIX_PATH_MAX:
            # A deep work dir (a test's tmp_path, a demo's scratch) cannot hold a unix
            # socket: the sockets go to a short directory of their own, removed with the VM.
            sockets = Path(tempfile.mkdtemp(prefix="kiln-sock-"))
            self._stack.callback(shutil.rmtree, sockets, True)
            if len(os.fsencode(sockets / "console.sock")) > _UNIX_PATH_MAX:
                raise LabError(f"the temporary directory {sockets.parent} is too deep for a "
                               "unix socket; set TMPDIR to a shorter one")
        qmp = sockets / "qmp.sock"
        disks = tuple(self._attach(index, disk, work)
                      for index, disk in enumerate(self.spec.disks))
        efi_vars = None
        if self.spec.firmware is Firmware.UEFI:
            efi_vars = self.spec.efi_vars or work / "OVMF_VARS.fd"
            if not efi_vars.exists():
                efi_vars.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.spec.ovmf.vars_template, efi_vars)
        return VmFiles(console=work / "console.log", qmp=qmp, disks=disks, efi_vars=efi_vars,
                       console_socket=sockets / "console.sock")

    def _attach(self, index: int, disk: Disk, work: Path) -> AttachedDisk:
        path = disk.image or work / f"disk{index}.qcow2"
        if path.exists():
            return AttachedDisk(disk=disk, path=path, format=disk_format(path))
        if disk.size is None:
            raise LabError(f"disk image {path} does not exist and no size was given")
        path.parent.mkdir(parents=True, exist_ok=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(disk.size)], timeout=60)
        return AttachedDisk(disk=disk, path=path, format=DiskFormat.QCOW2)

    def _remove_work_dir(self) -> None:
        if self._work_dir is None:
            return
        if self.keep:
            log.warning("keeping the VM's work dir %s", self._work_dir)
        else:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    # -- what it is --------------------------------------------------------------------------

    @property
    def files(self) -> VmFiles:
        if self._files is None:
            raise LabError("the VM has not been started")
        return self._files

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise LabError("the VM has not been started")
        return self._work_dir

    @property
    def console_log(self) -> Path:
        return self.files.console

    @property
    def efi_vars(self) -> Path | None:
        """The VM's UEFI variable store (None on SeaBIOS)."""
        return self.files.efi_vars

    @property
    def pid(self) -> int:
        return self._process().process.pid

    @property
    def exit_status(self) -> int | None:
        """QEMU's exit status, or None while it runs."""
        return self._process().process.poll()

    @property
    def running(self) -> bool:
        return self._qemu is not None and self._qemu.process.poll() is None

    def _process(self) -> Spawned:
        if self._qemu is None:
            raise LabError("the VM has not been started")
        return self._qemu

    def qemu_stderr(self) -> str:
        return self._process().stderr_output().decode("utf-8", errors="replace")

    def _describe_exit(self) -> str:
        lines = self.qemu_stderr().strip().splitlines()[-_STDERR_TAIL:]
        return ("\n--- QEMU stderr ---\n" + "\n".join(lines)) if lines else ""

    # -- console -----------------------------------------------------------------------------

    def _the_console(self) -> Console:
        if self._console is None:
            raise LabError("the VM has not been started")
        return self._console

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = 60.0, *, from_start: bool = False,
        poll: float = POLL_SECONDS,
    ) -> re.Match[str]:
        """Wait until the console shows `pattern` (a regex) after the previous match.
        `timeout` is in TCG seconds (scaled by the lab's factor); `poll` is how often the
        console is read (shorter to act on a line within milliseconds, e.g. a power cut).
        Raises `ConsoleTimeout` or, when QEMU exits first, `VmExited`; both quote the
        console's tail."""
        return self._the_console().wait_for(
            pattern, timeout=self.lab.scale(timeout), exit_status=lambda: self.exit_status,
            describe_exit=self._describe_exit, from_start=from_start, poll=poll,
        )

    def console_text(self) -> str:
        return self._the_console().text()

    def console_tail(self, lines: int = 30) -> str:
        return self._the_console().tail(lines)

    def follow(self, out: BinaryIO | None = None) -> int:
        """Copy the console to `out` (stdout) live until QEMU exits; return its status."""
        follow(self.console_log, out or sys.stdout.buffer, running=lambda: self.running)
        status = self.exit_status
        assert status is not None
        return status

    # -- control -----------------------------------------------------------------------------

    @property
    def qmp(self) -> Qmp:
        """The QMP connection, made on first use."""
        if self._qmp is None:
            qmp = Qmp(self.files.qmp, name=self.spec.smbios.serial)
            try:
                qmp.connect(timeout=30, alive=lambda: self.running)
            except BaseException:
                qmp.close()
                raise
            self._qmp = qmp
        return self._qmp

    def status(self) -> str:
        """QMP's run state: running, paused, shutdown, …"""
        return self.qmp.status()

    def system_reset(self) -> None:
        """Press the reset button (with `no_reboot`, QEMU ends instead)."""
        self.qmp.execute("system_reset")

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for QEMU to end by itself (the guest powered off); `timeout` in TCG seconds."""
        process = self._process().process
        deadline = time.monotonic() + self.lab.scale(timeout)
        while process.poll() is None:
            if time.monotonic() >= deadline:
                raise LabError(f"QEMU still runs after {self.lab.scale(timeout):.1f} s\n"
                               f"--- console tail ---\n{self.console_tail()}")
            time.sleep(0.1)
        return process.returncode

    def quit(self, timeout: float = 30.0) -> int:
        """End QEMU through QMP `quit` (what it wrote stays written)."""
        if self.running:
            with contextlib.suppress(LabError):  # QEMU may hang up before it answers
                self.qmp.execute("quit")
        try:
            return self.wait_exit(timeout)
        except LabError:
            self.power_cut()
            raise

    def type(self, text: str) -> None:
        """Type `text` on the serial console (a newline presses Enter)."""
        path = self.files.console_socket
        if path is None:
            raise LabError("this VM's console takes no input")
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                    connection.connect(os.fspath(path))
                    connection.sendall(text.encode())
                    # Stay connected long enough for QEMU to pass the bytes on.
                    time.sleep(0.2)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if time.monotonic() >= deadline or not self.running:
                    raise LabError(f"cannot type on the console: {e}") from e
                time.sleep(0.1)
            else:
                return

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL QEMU, the way a power loss looks to the guest's disks."""
        self._process().kill()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

