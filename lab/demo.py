"""`kiln lab demo`: one unit's whole life in the lab, the way a newcomer meets Kiln.

A signing key, a `kiln server` on its embedded SQLite in a scratch directory, a small signed
demo OS, the Kiln ramdisk (built, or reused when its inputs have not changed), a factory
profile; then one VM at a time on the same disk: it PXE-boots from the server through
manufacture, boots its disk into the first factory restore, then boots normally into the
demo OS. Progress is shown as it happens (the server's event stream during manufacture,
the console's key lines throughout) and the summary at the end rests on the server's unit
record and on what the demo OS itself printed. A failed step stops the demo with its name,
and the scratch directory (console logs, server log) is kept.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kiln.errors import KilnError
from kiln.image.signing import generate_keypair, load_signing_key
from kiln.process import run
from lab.accel import Accel
from lab.console import readable
from lab.demo_os import build_demo_image, parse_os_line
from lab.demo_report import (
    Outcome,
    StepRecord,
    clock,
    console_key_line,
    event_line,
    manufacture_seconds,
    record_problems,
    summary_table,
)
from lab.demo_server import KILN, DemoServer, free_port
from lab.profile import GIB, lab_manufdata
from lab.pxe import BOOTFILE, pxe_nic
from lab.spec import BootDevice, Disk, Firmware, Smbios, VmSpec
from lab.vm import Lab, Vm

PRODUCT = "demo"
PROFILE = "demo"
VARIANT = "qemu-lab"  # what lab.profile's variant is called and the lab's VMs match
DISK_BYTES = 4 * GIB
MEMORY_MB = 1024
RAMDISK_TIMEOUT = 1800.0  # the first build downloads Debian packages
# The demo's steps, in order (the summary lists every one, run or not).
STEPS = ("signing key", "server", "demo OS image", "Kiln ramdisk", "factory profile",
         "manufacture (PXE)", "first restore", "normal boot")
_REUSED = re.compile(r"reusing the ramdisk built from the same inputs: (\S+)")
_DECISION = re.compile(r"kiln: decision: ([a-z]+)")
_MANUFACTURED = re.compile(r"kiln: manufacture (succeeded|failed): ([^\r\n]*)")
_RESTORED = re.compile(r"kiln: restore (succeeded|failed): ([^\r\n]*)")
_OS_UP = re.compile(r"KILN-DEMO-OS: [^\r\n]*")


def default_cache() -> Path:
    return Path.home() / ".cache" / "kiln" / "demo"


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    cache: Path  # the demo's signing key and the ramdisk, kept between runs
    scratch: Path | None = None  # None: a new directory under the temp dir
    key: Path | None = None  # a signing key to use instead of the cache's demo.key
    firmware: Firmware = Firmware.BIOS
    serial: str = "KILN-DEMO-0001"
    version: str = "1.0.0"
    keep: bool = False  # keep the scratch directory after a success too
    stay: bool = False  # after a success, keep the server up until Ctrl-C


class StepFailed(KilnError):
    """A step could not do what it says; the message names what was seen."""


@dataclass(frozen=True, kw_only=True)
class Boot:
    """One boot's outcome: the ramdisk's decision and the console's final line."""

    decision: str | None
    final: re.Match[str]
    console: Path


class Demo:
    def __init__(self, options: DemoOptions, *, out: TextIO = sys.stdout):
        self.options = options
        self.out = out
        self.steps: list[StepRecord] = []
        self.started = time.monotonic()
        self.scratch = options.scratch or Path(tempfile.mkdtemp(prefix="kiln-demo-"))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.server = DemoServer(self.scratch / "server", port=free_port(),
                                 log_file=self.scratch / "server.log")
        self._detail = ""

    @functools.cached_property
    def lab(self) -> Lab:
        """The lab, found when first needed (finding KVM may take a probe boot)."""
        (self.scratch / "vm").mkdir(exist_ok=True)
        return Lab.detect(base_dir=self.scratch / "vm")

    # -- output ----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[{clock(time.monotonic() - self.started):>5}] {text}", file=self.out,
              flush=True)

    def title(self, text: str) -> None:
        print(f"\n\033[1m== {text}\033[0m" if self.out.isatty() else f"\n== {text}",
              file=self.out, flush=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Time a step and record its outcome; `self.done(detail)` says what it rests on."""
        self.title(title)
        self._detail = ""
        started = time.monotonic()
        try:
            yield
        except BaseException as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.steps.append(StepRecord(title=title, outcome=Outcome.FAILED,
                                         seconds=time.monotonic() - started, detail=reason))
            raise
        self.steps.append(StepRecord(title=title, outcome=Outcome.OK,
                                     seconds=time.monotonic() - started, detail=self._detail))

    def done(self, detail: str) -> None:
        self._detail = detail

    # -- the demo --------------------------------------------------------------------------

    def run(self) -> int:
        options = self.options
        slow = " (no working KVM here: a few minutes)" if self.lab.accel is Accel.TCG else ""
        print(f"Kiln lifecycle demo: unit {options.serial}, {options.firmware.value.upper()} "
              f"firmware, QEMU under {self.lab.accel.value.upper()}{slow}\n"
              f"scratch directory {self.scratch}; cache {options.cache}", file=self.out)
        failed: BaseException | None = None
        try:
            try:
                self._lifecycle()
            except (KilnError, OSError, KeyboardInterrupt) as e:
                failed = e
            self._summary(failed)
            if failed is None and options.stay:
                self._stay()
        finally:
            self.server.stop()
        return self._clean_up(failed)

    def _lifecycle(self) -> None:
        key, server, image_step, ramdisk_step, profile, manufacture, restore, normal = STEPS
        with self.step(key):
            key_path = self._key()
        with self.step(server):
            self._start_server(key_path.with_suffix(".pub"))
        with self.step(image_step):
            image, image_id = self._image(key_path)
        with self.step(ramdisk_step):
            ramdisk = self._ramdisk(key_path.with_suffix(".pub"))
        with self.step(profile):
            line_key = self._profile(image, image_id, ramdisk)
        disk = self.scratch / "unit.img"
        with disk.open("wb") as handle:
            handle.truncate(DISK_BYTES)  # sparse: a blank disk as a new unit has
        with self.step(manufacture):
            self._manufacture(disk, line_key)
        with self.step(restore):
            self._restore(disk)
        with self.step(normal):
            self._normal_boot(disk)

    def _key(self) -> Path:
        if self.options.key is not None:
            for path in (self.options.key, self.options.key.with_suffix(".pub")):
                if not path.is_file():
                    raise StepFailed(f"{path} is missing (--key names a private key with "
                                     "its .pub beside it)")
            self.done(f"given: {self.options.key}")
            self.say(f"using the signing key {self.options.key}")
            return self.options.key
        key = self.options.cache / "demo.key"
        if key.exists():
            self.say(f"reusing the demo's signing key {key} (the ramdisk built for it trusts "
                     "it, so that build can be reused too)")
            self.done(f"reused {key}")
        else:
            self.options.cache.mkdir(parents=True, exist_ok=True)
            key_id = generate_keypair(key, key.with_suffix(".pub"))
            self.say(f"made the Ed25519 signing key {key_id}: {key} (private, 0600) and "
                     f"{key.with_suffix('.pub')}")
            self.done(f"made {key}")
        return key

    def _start_server(self, public_key: Path) -> None:
        server = self.server
        admin = server.create_admin("demo")
        server.trust(public_key)
        server.start()
        token_file = self.scratch / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(admin.token + "\n")
        serial = self.options.serial
        self.say(f"kiln server on SQLite in {server.data_dir}, serving {server.url} "
                 f"(the unit reaches it at {server.guest_url})")
        self.say(f"watch the unit live (log in as {admin.username} with the password "
                 f"{admin.password}):")
        self.say(f"    web UI      {server.unit_page(serial)}")
        self.say(f"    API stream  curl -N -H \"Authorization: Bearer $(cat {token_file})\" "
                 f"{server.stream_url(serial)}")
        self.say("    (both answer 'not found' until the unit reports itself, about half a "
                 "minute after it powers on)")
        self.done(f"{server.url}, admin created, image key trusted")

    def _image(self, key_path: Path) -> tuple[Path, str]:
        key = load_signing_key(key_path)
        image = build_demo_image(self.scratch, key=key, product=PRODUCT,
                                 version=self.options.version, variant=VARIANT)
        image_id = self.server.push_image(image)
        self.say(f"built {image.name} ({image.stat().st_size >> 10} KiB, signed by "
                 f"{key.key_id}): busybox, an init that reports what restore wrote")
        self.say(f"pushed it: the server checked its signature and every frame; id "
                 f"{image_id[:12]}…")
        self.done(f"{PRODUCT} {self.options.version}, id {image_id[:12]} on the server")
        return image, image_id

    def _ramdisk(self, public_key: Path) -> Path:
        out = self.options.cache / "ramdisk"
        self.say("kiln initramfs build: Debian's kernel and Python, Kiln's appliance code "
                 "(a minute or two when its inputs changed)")
        env = {"HOME": str(Path.home())} | {
            name: os.environ[name] for name in ("KILN_CACHE",) if name in os.environ}
        result = run([*KILN, "-v", "initramfs", "build", "--out", out, "--trust", public_key],
                     timeout=RAMDISK_TIMEOUT, env=env)
        reused = _REUSED.search(result.stderr.decode("utf-8", errors="replace"))
        size = (out / "initrd.zst").stat().st_size >> 20
        if reused:
            self.say(f"reused the ramdisk built earlier from the same inputs ({reused.group(1)})")
            self.done(f"reused: inputs unchanged ({size} MiB initrd)")
        else:
            self.say(f"built the ramdisk in {result.seconds:.0f} s ({size} MiB initrd): {out}")
            self.done(f"built ({size} MiB initrd)")
        return out

    def _profile(self, image: Path, image_id: str, ramdisk: Path) -> str:
        server = self.server
        kernel, initrd = ramdisk / "vmlinuz", ramdisk / "initrd.zst"
        server.put_file("vmlinuz", kernel)
        server.put_file("initrd.zst", initrd)
        manufdata = lab_manufdata(image=image, image_id=image_id, kernel=kernel,
                                  initrd=initrd, product=PRODUCT)
        line_key = server.put_profile(PROFILE, manufdata, kernel_file="vmlinuz",
                                      initrd_file="initrd.zst")
        self.say(f"profile {PROFILE!r}: variant {VARIANT} (1 GiB RAM, one 3-5 GiB disk, one "
                 "NIC), RECOVERY 512 MiB, the image, kernel and ramdisk")
        self.say(f"iPXE script the line boots: {server.url}/mfg/{PROFILE}/boot.ipxe")
        self.done(f"profile {PROFILE}, boot files stored")
        return line_key

    # -- the boots ----------------------------------------------------------------------------

    def _manufacture(self, disk: Path, line_key: str) -> None:
        server = self.server
        tftp = self.scratch / "tftp"
        chain = f"http://{PROFILE}:{line_key}@{server.guest_url.split('://')[1]}"
        write_ipxe_script_text(tftp, [
            "#!ipxe", "echo Kiln demo: DHCP and TFTP done, chaining to the factory server",
            f"chain {chain}/mfg/{PROFILE}/boot.ipxe"])
        spec = VmSpec(firmware=self.options.firmware, boot=BootDevice.NETWORK,
                      nics=(pxe_nic(tftp),), disks=(Disk(image=disk),), memory_mb=MEMORY_MB,
                      smbios=Smbios(serial=self.options.serial), no_reboot=True,
                      efi_vars=self._efi_vars())
        self.say("power on: the firmware PXE-boots (QEMU's DHCP/TFTP hand iPXE a script that "
                 "chains to the server's boot.ipxe)")
        follower = server.follow(self.options.serial, self._show_event)
        try:
            boot = self._boot("manufacture", spec, until=_MANUFACTURED, timeout=900)
        finally:
            follower.stop()
        if boot.final.group(1) != "succeeded":
            raise StepFailed(f"the unit says: manufacture failed: {boot.final.group(2)} "
                             f"(console: {boot.console})")
        record = server.unit(self.options.serial)
        problems = record_problems(record, serial=self.options.serial, profile=PROFILE,
                                   variant=VARIANT)
        if problems:
            raise StepFailed("the console says manufacture succeeded, but the server's record "
                             "disagrees: " + "; ".join(problems))
        seconds = manufacture_seconds(record)
        taken = f" in {seconds:.1f} s by the unit's clock" if seconds is not None else ""
        self.say(f"the server's record: {record['lifecycle']} {record['status']}{taken}, "
                 f"variant {record['variant']}, admin password escrowed; {follower.count} "
                 "events streamed")
        if follower.error and not follower.count:
            self.say(f"(the event stream did not work: {follower.error})")
        self.done(f"server record: {record['status']}{taken}, {follower.count} events, "
                  "password escrowed")

    def _restore(self, disk: Path) -> None:
        self.say("power on from the disk: GRUB (set up by manufacture) starts the Kiln ramdisk "
                 "from RECOVERY; PRIMARY is empty, so it restores")
        boot = self._boot("restore", self._disk_spec(disk), until=_RESTORED, timeout=600)
        if boot.decision != "restore":
            raise StepFailed(f"the ramdisk decided {boot.decision!r}, not restore "
                             f"(console: {boot.console})")
        if boot.final.group(1) != "succeeded":
            raise StepFailed(f"restore failed: {boot.final.group(2)} (console: {boot.console})")
        self.done(f"console: {boot.final.group(2).split(';')[0]}; the restore path has no "
                  "network, its events wait in RECOVERY/log/")

    def _normal_boot(self, disk: Path) -> None:
        self.say("power on from the disk: PRIMARY carries /boot.normal, so the ramdisk hands "
                 "over to the demo OS")
        boot = self._boot("normal", self._disk_spec(disk), until=_OS_UP, timeout=600)
        if boot.decision != "normal":
            raise StepFailed(f"the ramdisk decided {boot.decision!r}, not normal "
                             f"(console: {boot.console})")
        report = parse_os_line(boot.final.group(0))
        expected_host = self.options.serial.lower()
        if report is None or report.version != self.options.version or report.pid != 1 \
                or report.hostname != expected_host or len(report.machine_id) != 32:
            raise StepFailed(f"the demo OS reported {boot.final.group(0)!r}; expected version "
                             f"{self.options.version}, pid 1, host {expected_host} and a "
                             f"32-character machine-id (console: {boot.console})")
        self.done(f"demo OS {report.version} as pid 1, host {report.hostname}, machine-id "
                  f"{report.machine_id[:8]}…")

    def _efi_vars(self) -> Path | None:
        return self.scratch / "unit.vars" if self.options.firmware is Firmware.UEFI else None

    def _disk_spec(self, disk: Path) -> VmSpec:
        return VmSpec(firmware=self.options.firmware, boot=BootDevice.DISK,
                      disks=(Disk(image=disk),), memory_mb=MEMORY_MB,
                      smbios=Smbios(serial=self.options.serial), no_reboot=True,
                      efi_vars=self._efi_vars())

    def _boot(self, name: str, spec: VmSpec, *, until: re.Pattern[str], timeout: float
              ) -> Boot:
        """Run one VM until the console shows `until`, then until QEMU ends (the guest
        reboots or powers off); show the key lines as they come. The console is kept as
        `console-NAME.log` in the scratch directory."""
        log = self.scratch / f"console-{name}.log"
        with self.lab.vm(spec) as vm:
            try:
                decision, final = self._watch(vm, until=until, timeout=timeout)
                status = vm.wait_exit(timeout=300)
                if status != 0:
                    raise StepFailed(f"QEMU exited with status {status}: "
                                     f"{vm.qemu_stderr().strip()[-500:]}")
            except KilnError as e:
                raise StepFailed(f"{e}\n(the whole console: {log})") from e
            finally:
                log.write_text(readable(vm.console_text()))
        self.say(f"the VM is off (console log {log.name})")
        return Boot(decision=decision, final=final, console=log)

    def _watch(self, vm: Vm, *, until: re.Pattern[str], timeout: float
               ) -> tuple[str | None, re.Match[str]]:
        deadline = time.monotonic() + self.lab.scale(timeout)
        consumed = 0
        decision: str | None = None
        while True:
            status = vm.exit_status
            text = vm.console_text()
            end = text.rfind("\n") + 1
            for raw in text[consumed:end].splitlines():
                line = readable(raw).strip()
                shown = console_key_line(line)
                if shown:
                    self.say(f"unit: {shown}")
                found = _DECISION.search(line)
                if found:
                    decision = found.group(1)
                final = until.search(line)
                if final:
                    return decision, final
            consumed = max(consumed, end)
            if status is not None:
                raise StepFailed(f"QEMU exited (status {status}) before the console showed "
                                 f"{until.pattern!r}; last lines:\n{vm.console_tail(15)}")
            if time.monotonic() > deadline:
                raise StepFailed(f"the console did not show {until.pattern!r} within "
                                 f"{self.lab.scale(timeout):.0f} s; last lines:\n"
                                 f"{vm.console_tail(15)}")
            time.sleep(0.2)

    def _show_event(self, event: dict[str, Any]) -> None:
        line = event_line(event)
        if line:
            self.say(f"server: {line}")

    # -- the end -----------------------------------------------------------------------------

    def _summary(self, failed: BaseException | None) -> None:
        ran = {step.title for step in self.steps}
        for title in STEPS:
            if title not in ran:
                self.steps.append(StepRecord(title=title, outcome=Outcome.NOT_RUN))
        total = time.monotonic() - self.started
        self.title("Summary")
        print(summary_table(self.steps), file=self.out)
        print(f"  total {clock(total)} min", file=self.out)
        if failed is None:
            print(f"\nUnit {self.options.serial} was manufactured over PXE, restored from "
                  "RECOVERY and booted its OS.", file=self.out, flush=True)
            return
        step = next((s.title for s in self.steps if s.outcome is Outcome.FAILED), "setup")
        why = str(failed).strip() or type(failed).__name__
        print(f"\nkiln demo: step {step!r} failed: {why}", file=self.out, flush=True)

    def _stay(self) -> None:
        server = self.server
        print(f"The server stays up until Ctrl-C: {server.unit_page(self.options.serial)} "
              f"(log in as {server.admin.username if server.admin else '?'}).", file=self.out,
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)

    def _clean_up(self, failed: BaseException | None) -> int:
        if failed is None:
            if self.options.keep:
                print(f"Kept the scratch directory {self.scratch}.", file=self.out)
            else:
                shutil.rmtree(self.scratch, ignore_errors=True)
                print("Removed the scratch directory (--keep keeps it).", file=self.out)
            return 0
        logs = sorted(p.name for p in self.scratch.glob("*.log"))
        print(f"Kept the scratch directory {self.scratch} ({', '.join(logs) or 'no logs'}).",
              file=self.out, flush=True)
        return 1


def write_ipxe_script_text(tftp: Path, lines: list[str]) -> Path:
    """A boot.ipxe of these lines (the lab's `IpxeBoot` loads a kernel; the demo chains
    to the server's own script instead, as a factory line does)."""
    tftp.mkdir(parents=True, exist_ok=True)
    path = tftp / BOOTFILE
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def run_demo(options: DemoOptions, *, out: TextIO = sys.stdout) -> int:
    """Run the demo; SIGTERM and SIGHUP end it as Ctrl-C does (the VM and the server
    stopped, the summary printed), never leaving them behind."""
    if threading.current_thread() is not threading.main_thread():
        return Demo(options, out=out).run()
    previous = {number: signal.signal(number, _interrupted)
                for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return Demo(options, out=out).run()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


