from __future__ import annotations

import pytest

from kiln.cmdline import DEFAULT_ROOT, DebugAction, ForcedMode, parse_cmdline


def test_a_manufacturing_command_line() -> None:
    line = parse_cmdline(
        "BOOT_IMAGE=vmlinuz initrd=initrd.zst console=tty0 console=ttyS0,115200n8 "
        "mfgurl=http://10.0.2.2:8080/mfg/manufData.json quiet\n"
    )
    assert line.mfgurl == "http://10.0.2.2:8080/mfg/manufData.json"
    assert line.mode is None
    assert line.root == DEFAULT_ROOT
    assert line.console_devices == ("/dev/tty0", "/dev/ttyS0")
    assert line.problems == ()


@pytest.mark.parametrize(("word", "mode"), [("restore", ForcedMode.RESTORE),
                                            ("erase", ForcedMode.ERASE),
                                            ("shell", ForcedMode.SHELL)])
def test_forced_modes(word: str, mode: ForcedMode) -> None:
    assert parse_cmdline(f"kiln.mode={word}").mode is mode


def test_root_and_debug() -> None:
    line = parse_cmdline("kiln.root=UUID=1234-abcd kiln.debug=raise")
    assert line.root == "UUID=1234-abcd"
    assert line.debug is DebugAction.RAISE


def test_no_console_means_dev_console() -> None:
    assert parse_cmdline("quiet").console_devices == ("/dev/console",)


def test_every_problem_is_reported_and_nothing_raises() -> None:
    line = parse_cmdline(
        "kiln.mood=restore kiln.mode=explode kiln.root=/dev/sda2 mfgurl=ftp://x kiln.debug=x"
    )
    assert line.mode is None
    assert line.root == DEFAULT_ROOT
    assert line.mfgurl is None
    joined = "\n".join(line.problems)
    assert len(line.problems) == 5
    assert "unknown kernel parameter 'kiln.mood=restore'" in joined
    assert "kiln.mode='explode'" in joined
    assert "kiln.root='/dev/sda2'" in joined
    assert "mfgurl='ftp://x'" in joined
    assert "kiln.debug='x'" in joined


def test_unbalanced_quotes_do_not_raise() -> None:
    assert parse_cmdline('console=ttyS0 foo="bar').consoles == ("ttyS0",)
