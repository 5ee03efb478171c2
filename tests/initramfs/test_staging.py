from __future__ import annotations

import shutil
from pathlib import Path

from initramfs.contents import CONTENTS, RamdiskContents
from initramfs.staging import check


def small_contents() -> RamdiskContents:
    return RamdiskContents(
        debian_packages=(), excluded_packages=(), virtual_providers=(),
        python_modules=("json",), tools=("tar", "sh"), kernel_modules=(), kiln_packages=(),
    )


def test_check_names_a_missing_tool_module_and_library(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy("/usr/bin/tar", tmp_path / "usr/bin/tar")
    (tmp_path / "usr/lib/python3.11").mkdir(parents=True)
    problems = check(tmp_path, small_contents())
    assert "tool 'sh' is not on PATH" in problems
    assert "python module 'json' is missing" in problems
    assert "usr/bin/tar needs libc.so.6, which is missing" in problems


def test_check_passes_when_everything_is_there(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy("/usr/bin/tar", tmp_path / "usr/bin/tar")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_bytes(b"")
    (tmp_path / "bin/sh").symlink_to("busybox")
    (tmp_path / "usr/lib/python3.11/json").mkdir(parents=True)
    libraries = tmp_path / "lib/x86_64-linux-gnu"
    libraries.mkdir(parents=True)
    for path in Path("/lib/x86_64-linux-gnu").glob("lib*.so*"):
        (libraries / path.name).touch()
    assert check(tmp_path, small_contents()) == []


def test_the_declaration_is_consistent() -> None:
    assert set(CONTENTS.debian_packages).isdisjoint(CONTENTS.excluded_packages)
    assert "busybox-static" in CONTENTS.debian_packages  # the rescue shell's /bin/sh
    assert len(set(CONTENTS.kernel_modules)) == len(CONTENTS.kernel_modules)
