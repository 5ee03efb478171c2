"""(c) The external tree and each package directory have what buildroot's infrastructure
requires (shared/buildroot/README.md: br2-external and pkg-python.mk)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.buildroot.layout import TREE, check_layout, edit, external_name

ZSTANDARD = "package/python-zstandard"


def test_the_tree_is_laid_out_as_buildroot_wants() -> None:
    assert external_name(TREE) == "KILN"
    assert check_layout(TREE) == []


@pytest.mark.parametrize("name", ["external.desc", "Config.in", "external.mk"])
def test_a_missing_top_level_file_is_reported(tree: Path, name: str) -> None:
    (tree / name).unlink()
    assert check_layout(tree) == [f"buildroot/ has no {name}"]


def test_external_mk_must_include_the_packages(tree: Path) -> None:
    (tree / "external.mk").write_text("# nothing\n")
    assert check_layout(tree) == [
        "external.mk does not include $(BR2_EXTERNAL_KILN_PATH)/package/*/*.mk"]


@pytest.mark.parametrize("name", ["Config.in", "python-zstandard.mk"])
def test_a_package_without_its_config_in_or_mk_is_reported(tree: Path, name: str) -> None:
    (tree / ZSTANDARD / name).unlink()
    assert check_layout(tree) == [f"{ZSTANDARD} has no {name}"]


@pytest.mark.parametrize("variable", ["VERSION", "SITE", "LICENSE", "SETUP_TYPE", "SOURCE",
                                      "LICENSE_FILES"])
def test_a_missing_variable_is_reported(tree: Path, variable: str) -> None:
    makefile = tree / ZSTANDARD / "python-zstandard.mk"
    lines = makefile.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(f"PYTHON_ZSTANDARD_{variable} ")]
    assert len(kept) == len(lines) - 1
    makefile.write_text("".join(kept))
    assert f"{ZSTANDARD}/python-zstandard.mk does not set PYTHON_ZSTANDARD_{variable}" \
        in check_layout(tree)


def test_a_local_package_needs_no_source_or_hash(tree: Path) -> None:
    makefile = tree / "package/kiln/kiln.mk"
    edit(makefile, "KILN_LICENSE = Apache-2.0\n", "")
    assert check_layout(tree) == ["package/kiln/kiln.mk does not set KILN_LICENSE"]


def test_an_unknown_setup_type_is_reported(tree: Path) -> None:
    edit(tree / ZSTANDARD / "python-zstandard.mk", "_SETUP_TYPE = pep517",
         "_SETUP_TYPE = distutils")
    assert check_layout(tree) == [
        "PYTHON_ZSTANDARD_SETUP_TYPE = distutils is not one of setuptools, setuptools-rust, "
        "pep517, flit, hatch, maturin, poetry"]


def test_the_python_package_infrastructure_is_required(tree: Path) -> None:
    edit(tree / ZSTANDARD / "python-zstandard.mk", "$(eval $(python-package))",
         "$(eval $(generic-package))")
    assert check_layout(tree) == [
        f"{ZSTANDARD}/python-zstandard.mk does not end with $(eval $(python-package)) "
        "(found ['generic-package'])"]


def test_the_enable_symbol_must_match_the_directory(tree: Path) -> None:
    shutil.move(tree / ZSTANDARD, tree / "package/python-zstd")
    (tree / "package/python-zstd/python-zstandard.mk").rename(
        tree / "package/python-zstd/python-zstd.mk")
    problems = check_layout(tree)
    assert "package/python-zstd/Config.in does not define BR2_PACKAGE_PYTHON_ZSTD (the enable " \
        "symbol buildroot derives from the directory name)" in problems
    assert "Config.in does not source package/python-zstd/Config.in" in problems


def test_a_package_config_in_must_be_sourced(tree: Path) -> None:
    edit(tree / "Config.in", 'source "$BR2_EXTERNAL_KILN_PATH/package/kiln/Config.in"\n', "")
    assert check_layout(tree) == ["Config.in does not source package/kiln/Config.in"]


@pytest.mark.parametrize("name", ["zstandard-0.25.0.tar.gz", "zstd/COPYING"])
def test_the_hash_file_must_cover_the_download_and_the_licenses(tree: Path, name: str) -> None:
    hashes = tree / ZSTANDARD / "python-zstandard.hash"
    lines = hashes.read_text().splitlines(keepends=True)
    hashes.write_text("".join(line for line in lines if not line.rstrip().endswith(f"  {name}")))
    assert check_layout(tree) == [f"{ZSTANDARD}/python-zstandard.hash has no hash for {name}"]
