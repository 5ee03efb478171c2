"""The one place where Kiln runs external programs.

Every command is an argv list (never a shell string), runs with a minimal environment, has
explicit success codes and a timeout, and is logged in a form that can be pasted into a
shell. Tests replace nothing here: they guard `subprocess.Popen` itself, so a program that a
test did not allow fails loudly whether or not it came through this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeAlias

from kiln.errors import KilnError

log = logging.getLogger(__name__)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 300.0
_STDERR_TAIL_LINES = 20
_REAP_SECONDS = 1.0  # after a kill, for the output still in the pipes

Arg: TypeAlias = str | os.PathLike[str]


def minimal_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every command gets: a fixed PATH, a C UTF-8 locale, UTC."""
    environment = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    if extra:
        environment.update(extra)
    return environment


def render(argv: Sequence[Arg]) -> str:
    """The command as one line that can be pasted into a shell."""
    return shlex.join(os.fspath(a) for a in argv)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


class CommandError(KilnError):
    """A command exited with a code outside its success codes, or could not start."""

    def __init__(self, *, argv: Sequence[str], returncode: int | None, stderr: bytes, why: str):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.decode("utf-8", errors="replace").strip().splitlines()[-_STDERR_TAIL_LINES:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"{why}: {render(argv)}{detail}")


class CommandTimeout(CommandError):
    """A command ran longer than its timeout and was killed."""


def _argv(argv: Sequence[Arg]) -> list[str]:
    if isinstance(argv, str | bytes):
        raise TypeError("commands are argv lists, not strings")
    if not argv:
        raise ValueError("empty command")
    return [os.fspath(a) for a in argv]


def _popen(
    argv: list[str], *, stdin: int | IO[bytes] | None, stdout: int | IO[bytes] | None,
    stderr: int | IO[bytes] | None, env: Mapping[str, str] | None, cwd: Path | None,
) -> subprocess.Popen[bytes]:
    log.info("+ %s", render(argv))
    try:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr,
            env=minimal_environment(env), cwd=cwd, close_fds=True,
        )
    except OSError as e:
        raise CommandError(argv=argv, returncode=None, stderr=b"", why=f"cannot start ({e})") from e


def run(
    argv: Sequence[Arg],
    *,
    input: bytes | None = None,
    success_codes: Collection[int] = (0,),
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> CommandResult:
    """Run a command to completion, capturing its output; raise unless it succeeded."""
    args = _argv(argv)
    started = time.monotonic()
    process = _popen(
        args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
    )
    try:
        stdout, stderr = process.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        process.kill()
        try:
            _, stderr = process.communicate(timeout=_REAP_SECONDS)
        except subprocess.TimeoutExpired:
            # A child of the command still holds the pipes open: stop reading, or the timeout
            # would last as long as that child does.
            stderr = b""
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            process.wait()
        raise CommandTimeout(
            argv=args, returncode=None, stderr=stderr, why=f"timed out after {timeout:g} s"
        ) from e
    result = CommandResult(
        argv=tuple(args), returncode=process.returncode, stdout=stdout, stderr=stderr,
        seconds=time.monotonic() - started,
    )
    log.debug("exit %d after %.3f s", result.returncode, result.seconds)
    if result.returncode not in success_codes:
        raise CommandError(
            argv=args, returncode=result.returncode, stderr=stderr,
            why=f"command failed with exit code {result.returncode}",
        )
    return result


class Spawned:
    """A running command whose stdin or stdout the caller streams.

    Use it as a context manager: leaving the block early (an exception) kills the command, so
    no child outlives the code that started it.
    """

    def __init__(self, argv: list[str], process: subprocess.Popen[bytes], stderr: IO[bytes]):
        self.argv = argv
        self.process = process
        self._stderr_file = stderr

    @property
    def stdin(self) -> IO[bytes]:
        assert self.process.stdin is not None, "spawned without stdin=PIPE"
        return self.process.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None, "spawned without stdout=PIPE"
        return self.process.stdout

    def wait(
        self, *, success_codes: Collection[int] = (0,), timeout: float = DEFAULT_TIMEOUT
    ) -> int:
        """Close our end of the pipes, wait for the exit and check the code."""
        if self.process.stdin and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            self.kill()
            raise CommandTimeout(
                argv=self.argv, returncode=None, stderr=self._stderr(),
                why=f"timed out after {timeout:g} s",
            ) from e
        if returncode not in success_codes:
            raise CommandError(
                argv=self.argv, returncode=returncode, stderr=self._stderr(),
                why=f"command failed with exit code {returncode}",
            )
        return returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()

    def stderr_output(self) -> bytes:
        """What the command wrote to stderr so far (e.g. why it exited early)."""
        return self._stderr()

    def _stderr(self) -> bytes:
        self._stderr_file.seek(0)
        return self._stderr_file.read()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is not None:
            self.kill()
        self._stderr_file.close()


def spawn(
    argv: Sequence[Arg],
    *,
    stdin_pipe: bool = False,
    stdout_pipe: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Spawned:
    """Start a command whose stdin and/or stdout the caller streams.

    Its stderr goes to an unnamed temporary file (a chatty child never blocks on a full pipe)
    and is quoted in the error if the command fails.
    """
    args = _argv(argv)
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned and closed by Spawned
    try:
        process = _popen(
            args,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else subprocess.DEVNULL,
            stderr=stderr, env=env, cwd=cwd,
        )
    except BaseException:
        stderr.close()
        raise
    return Spawned(args, process, stderr)
