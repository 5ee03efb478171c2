"""(a) Every symbol the defconfig sets exists in buildroot 2026.02.3 or in the external tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from initramfs.buildroot import DEFCONFIG, BuildrootTreeError
from tests.buildroot.layout import (
    TREE,
    check_symbols,
    defined_symbols,
    edit,
    shared_symbols,
    shared_symbols_file,
)


@pytest.fixture(scope="module")
def known() -> frozenset[str]:
    # Not skipped when absent: CI has shared/ beside the clone, and a missing file is an error.
    return shared_symbols(shared_symbols_file())


def test_every_defconfig_symbol_exists(known: frozenset[str]) -> None:
    assert len(known) == 9111  # shared/buildroot/README.md: 9111 names
    assert check_symbols(TREE, known) == []


def test_symbols_of_the_external_tree_count_as_defined(known: frozenset[str]) -> None:
    assert {"BR2_PACKAGE_KILN", "BR2_PACKAGE_PYTHON_ZSTANDARD"} <= defined_symbols(TREE)
    assert "BR2_PACKAGE_PYTHON_ZSTANDARD" not in known


def test_an_unknown_symbol_is_reported(tree: Path, known: frozenset[str]) -> None:
    edit(tree / DEFCONFIG, "BR2_PACKAGE_HDPARM=y\n",
         "BR2_PACKAGE_HDPARM=y\nBR2_PACKAGE_PYTHON_ZSTD=y\n")
    assert check_symbols(tree, known) == [
        f"{DEFCONFIG}: BR2_PACKAGE_PYTHON_ZSTD is neither a buildroot 2026.02.3 symbol nor "
        "defined by the external tree's Config.in files"
    ]


def test_a_symbol_only_the_external_defined_is_reported_once_its_definition_goes(
        tree: Path, known: frozenset[str]) -> None:
    edit(tree / "package/python-zstandard/Config.in", "config BR2_PACKAGE_PYTHON_ZSTANDARD",
         "config BR2_PACKAGE_PYTHON_ZSTD_BINDINGS")
    problems = check_symbols(tree, known)
    assert len(problems) == 1
    assert "BR2_PACKAGE_PYTHON_ZSTANDARD is neither" in problems[0]


def test_a_missing_symbols_file_is_an_error_not_a_skip(tmp_path: Path) -> None:
    path = shared_symbols_file(tmp_path / "kiln")
    with pytest.raises(BuildrootTreeError, match=r"symbols-2026\.02\.3\.txt is missing.*shared/"):
        shared_symbols(path)


def test_the_symbols_file_is_found_beside_the_checkout(tmp_path: Path) -> None:
    assert shared_symbols_file(tmp_path / "kiln") == (
        tmp_path / "shared/buildroot/symbols-2026.02.3.txt")
