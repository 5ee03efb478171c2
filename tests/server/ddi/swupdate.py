"""Debian bookworm's `swupdate` (2022.12, suricatta/hawkBit) as a real DDI client for tests.

    identity = make_signing_identity(tmp_path / "keys")
    swu = make_swu(directory=tmp_path, version="1.2.3", hardware="1.0", identity=identity)
    with SwupdateClient(directory=tmp_path / "swu", server_url=url, tenant="default",
                        controller_id="dev1", target_token=token, identity=identity) as client:
        client.start()
        client.wait_for("Update successful, executing post-update actions.")

What Debian's build insists on: a CMS-signed `sw-description` (`sw-description.sig` right
after it, checked against the certificate given with `-k`; the signer needs
keyUsage=digitalSignature and extendedKeyUsage=emailProtection), every image's `sha256`, a
`hardware-compatibility` list holding the revision given with `-H board:revision`, and a
hawkBit artifact whose `filename` ends in `.swu` (others are skipped).

Tests need `@pytest.mark.allow_commands("openssl", "swupdate")` (and "swupdate-ipc" for
`poll_now`); the .swu's cpio is written here with `kiln.cpio`. swupdate's output reaches the
log through a pseudo-terminal: into a plain file its processes hold it back until they exit.
Each client has its own TMPDIR (`directory/tmp`), where swupdate puts its IPC sockets
(sockinstctrl, swupdateprog; in /tmp without TMPDIR) and scratch files, so clients on two
pytest-xdist workers do not meet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from kiln.cpio import CpioEntry, newc_archive
from kiln.process import minimal_environment, run

BOARD = "kiln-test"
_LOG_TAIL_LINES = 40
_TERMINAL_NOISE = re.compile(rb"\x1b\[[0-9;]*m|\r")  # colours and CRs on a terminal


class SwupdateTimeout(AssertionError):
    """The client did not get where the test waited for; the message ends with its log."""


@dataclass(frozen=True)
class SigningIdentity:
    key: Path  # PEM private key: signs sw-description
    cert: Path  # PEM self-signed certificate: swupdate's `-k`


def make_signing_identity(directory: Path) -> SigningIdentity:
    """A fresh RSA key and self-signed certificate that swupdate accepts for CMS."""
    directory.mkdir(parents=True, exist_ok=True)
    identity = SigningIdentity(key=directory / "swu-signer.key", cert=directory / "swu-signer.pem")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/O=Kiln tests/CN=swupdate signer", "-keyout", identity.key,
         "-out", identity.cert, "-addext", "keyUsage=digitalSignature",
         "-addext", "extendedKeyUsage=emailProtection"])
    return identity


def sw_description(*, version: str, hardware: str, payload_name: str,
                   payload_sha256: str, install_path: str) -> str:
    """A libconfig sw-description: one `rawfile` image (dry runs hand it to `dummy`)."""
    return (
        "software =\n{\n"
        f'\tversion = "{version}";\n'
        f'\thardware-compatibility = [ "{hardware}" ];\n'
        "\timages: (\n\t\t{\n"
        f'\t\t\tfilename = "{payload_name}";\n'
        '\t\t\ttype = "rawfile";\n'
        f'\t\t\tpath = "{install_path}";\n'
        f'\t\t\tsha256 = "{payload_sha256}";\n'
        "\t\t}\n\t);\n}\n"
    )


def make_swu(*, directory: Path, version: str, hardware: str, identity: SigningIdentity,
             payload: bytes = b"kiln swupdate test payload\n", name: str = "update.swu",
             install_path: str = "/tmp/kiln-swupdate-never-written") -> Path:
    """Write a signed .swu (newc: sw-description, sw-description.sig, payload); return it.

    `hardware` is the revision the client is started with; `name` must end in `.swu`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    description = sw_description(
        version=version, hardware=hardware, payload_name="payload.bin",
        payload_sha256=hashlib.sha256(payload).hexdigest(), install_path=install_path)
    description_path = directory / f"{name}.sw-description"
    signature_path = directory / f"{name}.sw-description.sig"
    description_path.write_text(description)
    run(["openssl", "cms", "-sign", "-in", description_path, "-out", signature_path,
         "-signer", identity.cert, "-inkey", identity.key, "-outform", "DER",
         "-nosmimecap", "-binary"])
    swu = directory / name
    swu.write_bytes(newc_archive([
        CpioEntry.file("sw-description", description.encode()),
        CpioEntry.file("sw-description.sig", signature_path.read_bytes()),
        CpioEntry.file("payload.bin", payload),
    ]))
    return swu


class SwupdateClient:
    """One `swupdate -u …` process in dry-run mode, its output in `directory/swupdate.log`.

    `confirm` is suricatta's `-c`: "2" reports the pending action closed+success at start (as
    after a restart into the new image), "3" closed+failure. `attributes` become the
    config file's `identify` section, which swupdate PUTs to configData.
    """

    def __init__(self, *, directory: Path, server_url: str, tenant: str, controller_id: str,
                 identity: SigningIdentity, target_token: str | None = None,
                 gateway_token: str | None = None, hardware: str = "1.0",
                 attributes: Mapping[str, str] | None = None) -> None:
        if (target_token is None) == (gateway_token is None):
            raise ValueError("give exactly one of target_token and gateway_token")
        self.directory = directory
        self.server_url = server_url
        self.tenant = tenant
        self.controller_id = controller_id
        self.identity = identity
        self.token_option = ["-k", target_token] if target_token else ["-g", str(gateway_token)]
        self.hardware = hardware
        self.attributes = dict(attributes or {})
        self.log_path = directory / "swupdate.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._copier: threading.Thread | None = None
        self._log_offset = 0  # where the latest start's output begins in the log

    @property
    def environment(self) -> dict[str, str]:
        return {"TMPDIR": str(self.directory / "tmp")}

    def config_text(self) -> str:
        entries = ", ".join(f'{{ name = "{key}"; value = "{value}"; }}'
                            for key, value in self.attributes.items())
        identify = f"identify : ( {entries} );\n" if entries else ""
        return "globals : { };\n" + identify  # swupdate refuses a file without globals

    def argv(self, *, confirm: str | None = None, poll_seconds: int = 1) -> list[str]:
        """The command line (`-p` only counts until the server's `sleep` overrides it)."""
        suricatta = ["-t", self.tenant, "-u", self.server_url, "-i", self.controller_id,
                     *self.token_option, "-p", str(poll_seconds), "-r", "1", "-w", "1",
                     "-m", "1"]
        if confirm is not None:
            suricatta += ["-c", confirm]
        return ["swupdate", "-v", "-n", "-f", str(self.directory / "swupdate.cfg"),
                "-k", str(self.identity.cert), "-H", f"{BOARD}:{self.hardware}",
                "-u", " ".join(suricatta)]

    def start(self, *, confirm: str | None = None) -> None:
        """Start swupdate (its first poll is at once); a second start needs a `stop` first."""
        assert self.process is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "tmp").mkdir(exist_ok=True)
        (self.directory / "swupdate.cfg").write_text(self.config_text())
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        terminal, replica = pty.openpty()
        try:
            self.process = subprocess.Popen(
                self.argv(confirm=confirm), stdin=subprocess.DEVNULL, stdout=replica,
                stderr=replica, cwd=self.directory, start_new_session=True,
                env=minimal_environment(self.environment))
        except BaseException:
            os.close(terminal)
            raise
        finally:
            os.close(replica)
        self._copier = threading.Thread(target=self._copy_output, args=(terminal,), daemon=True)
        self._copier.start()

    def _copy_output(self, terminal: int) -> None:
        """Whole lines from the terminal into the log, until every writer has gone."""
        pending = b""
        with self.log_path.open("ab") as log:
            while True:
                try:
                    chunk = os.read(terminal, 65536)
                except OSError:  # EIO: the last process holding the terminal exited
                    chunk = b""
                if not chunk:
                    log.write(_TERMINAL_NOISE.sub(b"", pending))
                    break
                lines, newline, pending = (pending + chunk).rpartition(b"\n")
                log.write(_TERMINAL_NOISE.sub(b"", lines + newline))
                log.flush()
        os.close(terminal)

    def poll_now(self) -> None:
        """Ask the running client to poll at once (`swupdate-ipc hawkbitcfg -t`)."""
        run(["swupdate-ipc", "hawkbitcfg", "-t"], env=self.environment, timeout=10)

    def log_text(self) -> str:
        """The output since the latest `start` (the file keeps every run's)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def wait_for(self, text: str | None = None, *, condition: Callable[[], bool] | None = None,
                 timeout: float = 30.0) -> None:
        """Until `text` is in this run's log or `condition()` is true; else raise.

        Log lines worth waiting for: "Server initialized, entering suricatta main loop.",
        "Update successful, executing post-update actions.", "Error processing update
        chunk", "Cancel action available at" ("Sleeping for" is not logged).
        """
        deadline = time.monotonic() + timeout
        while True:
            if text is not None and text in self.log_text():
                return
            if condition is not None and condition():
                return
            if self.process is not None and self.process.poll() is not None:
                self._fail(f"swupdate exited ({self.process.returncode}) before", text)
            if time.monotonic() > deadline:
                self._fail(f"timed out after {timeout:g} s waiting for", text)
            time.sleep(0.1)

    def _fail(self, why: str, text: str | None) -> None:
        tail = "\n".join(self.log_text().splitlines()[-_LOG_TAIL_LINES:])
        raise SwupdateTimeout(f"{why} {text or 'the condition'!r}; {self.log_path} ends:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group (swupdate forks helpers), SIGKILL if it lingers."""
        if self.process is not None:
            if self.process.poll() is None:
                _signal_group(self.process, kill=False)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(self.process, kill=True)
                    self.process.wait()
            self.process = None
        if self._copier is not None:
            self._copier.join(timeout=5)
            self._copier = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], *, kill: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
