"""The subprocess chokepoint, and the test guard that makes every program a test runs explicit."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kiln.process import (
    SYSTEM_PATH,
    CommandError,
    CommandTimeout,
    minimal_environment,
    render,
    run,
    spawn,
)
from tests.conftest import UnexpectedCommand


@pytest.mark.allow_commands("true")
def test_run_success() -> None:
    result = run(["true"])
    assert result.returncode == 0
    assert result.argv == ("true",)
    assert result.stdout == b"" and result.stderr == b""
    assert result.seconds >= 0


@pytest.mark.allow_commands("sh")
def test_run_captures_output_and_takes_input_and_cwd(tmp_path: Path) -> None:
    result = run(["sh", "-c", "pwd; cat; echo warning >&2"], input=b"from stdin\n", cwd=tmp_path)
    assert result.text == f"{tmp_path}\nfrom stdin\n"
    assert result.stderr == b"warning\n"


@pytest.mark.allow_commands("sh")
def test_failure_names_the_command_and_quotes_the_end_of_stderr() -> None:
    script = "echo first >&2; for i in $(seq 30); do echo line$i >&2; done; exit 3"
    argv = ["sh", "-c", script]
    with pytest.raises(CommandError) as caught:
        run(argv)
    error = caught.value
    assert error.returncode == 3
    assert error.argv == tuple(argv)
    message = str(error)
    first, *tail = message.split("\n")
    assert first == f"command failed with exit code 3: {shlex.join(argv)}"
    assert tail == [f"  line{i}" for i in range(11, 31)]  # the last 20 lines of stderr
    assert b"first" in error.stderr  # all of it stays available


@pytest.mark.allow_commands("sh")
def test_explicit_success_codes() -> None:
    assert run(["sh", "-c", "exit 1"], success_codes=(0, 1)).returncode == 1
    with pytest.raises(CommandError, match="exit code 0"):
        run(["sh", "-c", "exit 0"], success_codes=(1,))


@pytest.mark.allow_commands("sleep")
def test_timeout_kills_the_command() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        run(["sleep", "30"], timeout=0.2)
    assert time.monotonic() - started < 5
    assert str(caught.value) == "timed out after 0.2 s: sleep 30"
    assert isinstance(caught.value, CommandError)
    assert caught.value.returncode is None


@pytest.mark.allow_commands("sh")
def test_timeout_is_bounded_when_a_child_keeps_the_pipes_open(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimeout):
            run(["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"], timeout=0.3)
        assert time.monotonic() - started < 5
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.allow_commands("env")
def test_commands_get_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_TEST_LEAK", "secret")
    monkeypatch.setenv("PATH", "/nowhere")
    lines = run(["env"]).text.splitlines()
    environment = dict(line.split("=", 1) for line in lines)
    assert environment == minimal_environment()
    assert environment["PATH"] == SYSTEM_PATH
    assert "KILN_TEST_LEAK" not in environment
    extra = dict(line.split("=", 1) for line in run(["env"], env={"ZSTD_CLEVEL": "3"}).text
                 .splitlines())
    assert extra == {**minimal_environment(), "ZSTD_CLEVEL": "3"}


@pytest.mark.parametrize("argv", ["tar -x", b"tar"])
def test_strings_are_not_commands(argv: str | bytes) -> None:
    with pytest.raises(TypeError, match="argv lists, not strings"):
        run(argv)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="argv lists, not strings"):
        spawn(argv)  # type: ignore[arg-type]


def test_an_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="empty command"):
        run([])


@pytest.mark.allow_commands("kiln-no-such-program")
def test_a_program_that_does_not_exist() -> None:
    with pytest.raises(CommandError, match=r"cannot start .*: kiln-no-such-program$") as caught:
        run(["kiln-no-such-program"])
    assert caught.value.returncode is None


def test_render_is_pasteable() -> None:
    assert render(["tar", "-C", Path("/a b"), "--xattrs-include=*", "it's"]) == (
        "tar -C '/a b' '--xattrs-include=*' 'it'\"'\"'s'"
    )


@pytest.mark.allow_commands("true")
def test_commands_are_logged_as_pasteable_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kiln.process"):
        run(["true", "a b"])
    assert "+ true 'a b'" in caplog.messages


@pytest.mark.allow_commands("cat")
def test_spawn_streams_stdin_and_stdout() -> None:
    with spawn(["cat"], stdin_pipe=True, stdout_pipe=True) as cat:
        cat.stdin.write(b"streamed\n")
        cat.stdin.close()
        assert cat.stdout.read() == b"streamed\n"
        assert cat.wait() == 0


@pytest.mark.allow_commands("sh")
def test_spawned_failure_quotes_stderr() -> None:
    with (
        spawn(["sh", "-c", "echo tar: broken archive >&2; exit 2"]) as command,
        pytest.raises(CommandError) as caught,
    ):
        command.wait()
    assert caught.value.returncode == 2
    assert "command failed with exit code 2: sh -c" in str(caught.value)
    assert str(caught.value).endswith("\n  tar: broken archive")


@pytest.mark.allow_commands("sleep")
def test_leaving_the_block_with_an_error_kills_the_command() -> None:
    with pytest.raises(RuntimeError, match="consumer failed"), spawn(["sleep", "30"]) as sleeper:
        raise RuntimeError("consumer failed")
    assert sleeper.process.returncode == -signal.SIGKILL


@pytest.mark.allow_commands("sleep")
def test_spawned_wait_times_out() -> None:
    with spawn(["sleep", "30"]) as sleeper:
        with pytest.raises(CommandTimeout, match=r"timed out after 0\.1 s: sleep 30"):
            sleeper.wait(timeout=0.1)
        assert sleeper.process.returncode == -signal.SIGKILL


# --- the guard in tests/conftest.py --------------------------------------------------------


def test_the_guard_refuses_a_program_the_test_did_not_allow() -> None:
    with pytest.raises(UnexpectedCommand,
                       match=r"test ran 'true' without @pytest\.mark\.allow_commands\('true'\)"):
        run(["/bin/true"])


def test_the_guard_also_catches_code_that_bypasses_kiln_process() -> None:
    with pytest.raises(UnexpectedCommand, match="test ran 'tar'"):
        subprocess.run(["/usr/bin/tar", "--version"], check=False, capture_output=True)


@pytest.mark.allow_commands("tar")
def test_the_guard_checks_each_program_separately() -> None:
    assert run(["tar", "--version"]).text.startswith("tar (GNU tar)")
    with pytest.raises(UnexpectedCommand, match="test ran 'zstd'"):
        run(["zstd", "--version"])
