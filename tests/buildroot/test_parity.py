"""(d) One declaration: initramfs/contents.py against the buildroot tree (and Debian's side),
through the tables in initramfs/buildroot.py. Each rule is shown to fail when broken."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from initramfs.buildroot import (
    DEFCONFIG,
    DEPENDS,
    ESSENTIALS,
    FRAGMENT,
    GRUB_PLATFORMS,
    PYTHON_MODULES,
    TOOLS,
    BuildrootTreeError,
    check_parity,
    main,
    read_config,
)
from initramfs.contents import CONTENTS
from tests.buildroot.layout import TREE, defined_symbols, edit, shared_symbols, shared_symbols_file


def test_the_tree_agrees_with_the_declaration() -> None:
    assert check_parity(TREE) == []


def test_every_symbol_the_tables_name_exists() -> None:
    known = shared_symbols(shared_symbols_file()) | defined_symbols(TREE)
    named = {s for p in (*TOOLS.values(), *PYTHON_MODULES.values(), *GRUB_PLATFORMS.values())
             for s in p.symbols}
    named |= {*DEPENDS, *(s for parents in DEPENDS.values() for s in parents), *ESSENTIALS}
    assert named - known == set()


def test_the_check_command_reports_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    assert capsys.readouterr().out == "buildroot/ agrees\n"


# Declared on one side only.

def test_a_declared_tool_without_a_provider_fails(tree: Path) -> None:
    contents = replace(CONTENTS, tools=(*CONTENTS.tools, "losetup"))
    assert check_parity(tree, contents) == [
        "tool 'losetup' is declared in initramfs/contents.py, but initramfs/buildroot.py does "
        "not say what provides it"]


def test_a_provider_of_an_undeclared_tool_fails(tree: Path) -> None:
    contents = replace(CONTENTS, tools=tuple(t for t in CONTENTS.tools if t != "hdparm"))
    assert check_parity(tree, contents) == [
        "initramfs/buildroot.py maps tool 'hdparm', which initramfs/contents.py does not declare"]


def test_a_declared_python_module_without_a_provider_fails(tree: Path) -> None:
    contents = replace(CONTENTS, python_modules=(*CONTENTS.python_modules, "yaml"))
    assert check_parity(tree, contents) == [
        "python module 'yaml' is declared in initramfs/contents.py, but initramfs/buildroot.py "
        "does not say what provides it"]


def test_a_provider_of_an_undeclared_python_module_fails(tree: Path) -> None:
    contents = replace(CONTENTS, python_modules=tuple(
        m for m in CONTENTS.python_modules if m != "zstandard"))
    assert check_parity(tree, contents) == [
        "initramfs/buildroot.py maps python module 'zstandard', which initramfs/contents.py "
        "does not declare"]


def test_the_projects_own_modules_need_only_the_kiln_package(tree: Path) -> None:
    contents = replace(CONTENTS, python_modules=(*CONTENTS.python_modules, "erase.methods"))
    assert check_parity(tree, contents) == []
    edit(tree / DEFCONFIG, "BR2_PACKAGE_KILN=y\n", "")
    problems = check_parity(tree, contents)
    assert "python module 'erase.methods' needs BR2_PACKAGE_KILN=y in " \
        f"{DEFCONFIG} (it is unset)" in problems


def test_a_declared_kernel_module_without_a_symbol_fails(tree: Path) -> None:
    contents = replace(CONTENTS, kernel_modules=(*CONTENTS.kernel_modules, "xfs"))
    assert check_parity(tree, contents) == [
        "kernel module 'xfs' is declared in initramfs/contents.py, but initramfs/buildroot.py "
        "names no CONFIG_ symbol for it"]


def test_a_symbol_for_an_undeclared_kernel_module_fails(tree: Path) -> None:
    contents = replace(CONTENTS, kernel_modules=tuple(
        m for m in CONTENTS.kernel_modules if m != "loop"))
    assert check_parity(tree, contents) == [
        "initramfs/buildroot.py maps kernel module 'loop', which initramfs/contents.py does "
        "not declare"]


def test_a_declared_grub_platform_without_a_provider_fails(tree: Path) -> None:
    contents = replace(CONTENTS, grub_platforms=(*CONTENTS.grub_platforms, "i386-efi"))
    assert check_parity(tree, contents) == [
        "GRUB platform 'i386-efi' is declared in initramfs/contents.py, but "
        "initramfs/buildroot.py does not say what provides it"]


def test_a_grub_platform_that_is_not_built_fails(tree: Path) -> None:
    edit(tree / DEFCONFIG, "BR2_TARGET_GRUB2_I386_PC=y\n", "")
    assert check_parity(tree) == [
        f"GRUB platform 'i386-pc' needs BR2_TARGET_GRUB2_I386_PC=y in {DEFCONFIG} (it is unset)"]


# Mapped, but not enabled.

def test_a_tool_whose_package_is_not_enabled_fails(tree: Path) -> None:
    edit(tree / DEFCONFIG, "BR2_PACKAGE_HDPARM=y\n", "")
    assert check_parity(tree) == [
        f"tool 'hdparm' needs BR2_PACKAGE_HDPARM=y in {DEFCONFIG} (it is unset)"]


def test_a_sub_option_that_is_not_set_fails(tree: Path) -> None:
    edit(tree / DEFCONFIG, "BR2_PACKAGE_UTIL_LINUX_WIPEFS=y\n",
         "# BR2_PACKAGE_UTIL_LINUX_WIPEFS is not set\n")
    assert check_parity(tree) == [
        f"tool 'wipefs' needs BR2_PACKAGE_UTIL_LINUX_WIPEFS=y in {DEFCONFIG} (it is n)"]


def test_a_stdlib_module_option_that_is_not_set_fails(tree: Path) -> None:
    edit(tree / DEFCONFIG, "BR2_PACKAGE_PYTHON3_SQLITE=y\n", "")
    assert check_parity(tree) == [
        f"python module 'sqlite3' needs BR2_PACKAGE_PYTHON3_SQLITE=y in {DEFCONFIG} "
        "(it is unset)"]


def test_a_kernel_module_built_as_a_module_fails(tree: Path) -> None:
    edit(tree / FRAGMENT, "CONFIG_BLK_DEV_NVME=y\n", "CONFIG_BLK_DEV_NVME=m\n")
    assert check_parity(tree) == [
        f"kernel module 'nvme' needs CONFIG_BLK_DEV_NVME=y in {FRAGMENT} (it is m)"]


def test_a_kernel_essential_that_is_missing_fails(tree: Path) -> None:
    edit(tree / FRAGMENT, "CONFIG_RD_ZSTD=y\n", "")
    assert check_parity(tree) == [f"the kernel needs CONFIG_RD_ZSTD=y in {FRAGMENT} (it is unset)"]


def test_a_ramdisk_essential_that_is_missing_fails(tree: Path) -> None:
    edit(tree / DEFCONFIG, "BR2_INIT_NONE=y\n", "BR2_INIT_BUSYBOX=y\n")
    assert check_parity(tree) == [f"the ramdisk needs BR2_INIT_NONE=y in {DEFCONFIG} (it is unset)"]


def test_an_unmet_dependency_fails(tree: Path) -> None:
    edit(tree / DEFCONFIG, "BR2_ROOTFS_DEVICE_CREATION_DYNAMIC_EUDEV=y\n", "")
    assert check_parity(tree) == [
        f"tool 'udevadm' needs BR2_ROOTFS_DEVICE_CREATION_DYNAMIC_EUDEV=y in {DEFCONFIG} "
        "(it is unset)",
        "BR2_PACKAGE_EUDEV=y (Kconfig drops it otherwise) needs "
        f"BR2_ROOTFS_DEVICE_CREATION_DYNAMIC_EUDEV=y in {DEFCONFIG} (it is unset)"]


def test_an_unmet_parent_package_fails(tree: Path) -> None:
    edit(tree / DEFCONFIG, "BR2_PACKAGE_PYTHON3=y\n", "")
    problems = check_parity(tree)
    assert "BR2_PACKAGE_PYTHON_ZSTANDARD=y (Kconfig drops it otherwise) needs " \
        f"BR2_PACKAGE_PYTHON3=y in {DEFCONFIG} (it is unset)" in problems
    assert "BR2_PACKAGE_PYTHON3_SSL=y (Kconfig drops it otherwise) needs " \
        f"BR2_PACKAGE_PYTHON3=y in {DEFCONFIG} (it is unset)" in problems


def test_the_defconfig_must_use_the_trees_fragment(tree: Path) -> None:
    edit(tree / DEFCONFIG, '/board/kiln/linux.fragment"', '/board/kiln/other.fragment"')
    assert check_parity(tree) == [
        f"{DEFCONFIG}: BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES does not name "
        "$(BR2_EXTERNAL_KILN_PATH)/board/kiln/linux.fragment"]


def test_the_kiln_package_version_follows_pyproject(tree: Path) -> None:
    edit(tree.parent / "pyproject.toml", 'version = "0.1.0"', 'version = "0.2.0"')
    assert check_parity(tree) == [
        "package/kiln/kiln.mk: KILN_VERSION = 0.1.0, but pyproject.toml says 0.2.0"]


# The Debian side stays honest.

def test_a_debian_provider_that_is_not_declared_fails(tree: Path) -> None:
    contents = replace(CONTENTS, debian_packages=tuple(
        p for p in CONTENTS.debian_packages if p != "python3-zstandard"))
    assert check_parity(tree, contents) == [
        "python module 'zstandard' comes from Debian's python3-zstandard, but debian_packages "
        "does not name python3-zstandard"]


def test_a_provider_reached_through_a_dependency_names_that_dependency(tree: Path) -> None:
    contents = replace(CONTENTS, debian_packages=tuple(
        p for p in CONTENTS.debian_packages if p != "python3-parted"))
    assert check_parity(tree, contents) == [
        "tool 'dmidecode' comes from Debian's dmidecode, but debian_packages does not name "
        "python3-parted",
        "python module 'parted' comes from Debian's python3-parted, but debian_packages does "
        "not name python3-parted"]


def test_a_debian_package_that_provides_nothing_declared_fails(tree: Path) -> None:
    contents = replace(CONTENTS, debian_packages=(*CONTENTS.debian_packages, "python3-yaml"))
    assert check_parity(tree, contents) == [
        "Debian package 'python3-yaml' provides nothing initramfs/contents.py declares: "
        "declare what it is for, so that buildroot must provide it too"]


# Reading the files.

def test_read_config_reads_values_and_unset_lines(tmp_path: Path) -> None:
    path = tmp_path / "defconfig"
    path.write_text('# comment\n\nBR2_A=y\n# BR2_B is not set\nBR2_C="x y"\n')
    assert read_config(path) == {"BR2_A": "y", "BR2_B": "n", "BR2_C": '"x y"'}


@pytest.mark.parametrize(("text", "message"), [
    ("BR2_A=y\nBR2_A y\n", r"defconfig:2: not a Kconfig assignment: 'BR2_A y'"),
    ("BR2_A=y\n# BR2_A is not set\n", r"defconfig:2: BR2_A is set twice"),
])
def test_read_config_rejects_what_kconfig_would_misread(tmp_path: Path, text: str,
                                                        message: str) -> None:
    (tmp_path / "defconfig").write_text(text)
    with pytest.raises(BuildrootTreeError, match=message):
        read_config(tmp_path / "defconfig")

