"""(b) The external tree's Kconfig files parse, and the defconfig's values for its own symbols
survive Kconfig (parsed by kconfiglib under a stub of buildroot's top level)."""

from __future__ import annotations

from pathlib import Path

import kconfiglib  # type: ignore[import-untyped]
import pytest

from initramfs.buildroot import DEFCONFIG
from tests.buildroot.layout import TREE, check_kconfig, edit, parse_kconfig


def test_the_tree_parses_and_keeps_the_defconfig_values(tmp_path: Path) -> None:
    assert check_kconfig(TREE, tmp_path) == []


def test_the_kiln_package_and_its_key_option_are_there(tmp_path: Path) -> None:
    kconf = parse_kconfig(TREE, tmp_path)
    kconf.load_config(str(TREE / DEFCONFIG))
    assert kconf.syms["BR2_PACKAGE_KILN"].str_value == "y"
    keys = kconf.syms["BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR"]
    assert (keys.type, keys.visibility) == (kconfiglib.STRING, 2)  # shown and settable


def test_the_kiln_package_selects_the_python_dependencies(tmp_path: Path) -> None:
    # What a menuconfig user gets who only ticks kiln (with its prerequisites).
    minimal = tmp_path / "minimal_defconfig"
    minimal.write_text("BR2_x86_64=y\nBR2_TOOLCHAIN_BUILDROOT_GLIBC=y\nBR2_PACKAGE_PYTHON3=y\n"
                       "BR2_PACKAGE_EUDEV=y\nBR2_PACKAGE_KILN=y\n")
    kconf = parse_kconfig(TREE, tmp_path)
    kconf.load_config(str(minimal))
    assert kconf.syms["BR2_PACKAGE_KILN"].str_value == "y"
    for symbol in ("BR2_PACKAGE_PYTHON_ZSTANDARD", "BR2_PACKAGE_PYTHON_PYUDEV",
                   "BR2_PACKAGE_PYTHON_PYPARTED", "BR2_PACKAGE_PYTHON_PYROUTE2",
                   "BR2_PACKAGE_PYTHON_REQUESTS", "BR2_PACKAGE_PYTHON_CRYPTOGRAPHY",
                   "BR2_PACKAGE_PYTHON3_SQLITE", "BR2_PACKAGE_PYTHON3_SSL"):
        assert kconf.syms[symbol].str_value == "y", symbol
    minimal.write_text("BR2_x86_64=y\nBR2_PACKAGE_PYTHON3=y\nBR2_PACKAGE_KILN=y\n")
    kconf.load_config(str(minimal))
    assert kconf.syms["BR2_PACKAGE_KILN"].str_value == "n"  # no eudev, no glibc: not offered


def test_a_syntax_error_fails_the_parse(tree: Path, tmp_path: Path) -> None:
    edit(tree / "package/kiln/Config.in", "\tbool \"kiln\"\n", "\tbool \"kiln\n")
    with pytest.raises(kconfiglib.KconfigError, match=r"package/kiln/Config\.in"):
        check_kconfig(tree, tmp_path)


def test_a_kconfig_warning_is_reported(tree: Path, tmp_path: Path) -> None:
    edit(tree / "package/kiln/Config.in", "\tselect BR2_PACKAGE_PYTHON_PYROUTE2\n",
         "\tselect BR2_PACKAGE_PYTHON_PYROUTE2\n\tselect BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR\n")
    [problem] = check_kconfig(tree, tmp_path)
    assert problem.startswith("Kconfig: warning: BR2_PACKAGE_KILN ")
    assert "selects the string symbol BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR" in problem


def test_an_unmet_depends_on_is_reported(tree: Path, tmp_path: Path) -> None:
    edit(tree / "package/kiln/Config.in", "\tdepends on BR2_PACKAGE_PYTHON3\n",
         "\tdepends on BR2_PACKAGE_PYTHON3\n\tdepends on BR2_PACKAGE_PYTHON3_ZSTD\n")
    assert check_kconfig(tree, tmp_path) == [
        f"{DEFCONFIG} sets BR2_PACKAGE_KILN=y, but Kconfig makes it n: a `depends on` is unmet",
    ]
