from __future__ import annotations

from pathlib import Path

from initramfs.elf import read_deps


def test_elf_dependencies_of_a_real_binary() -> None:
    deps = read_deps(Path("/usr/bin/tar"))
    assert deps is not None
    assert "libc.so.6" in deps.needed


def test_a_script_is_not_elf(tmp_path: Path) -> None:
    script = tmp_path / "s"
    script.write_bytes(b"\x7fELF" + bytes([1, 1]) + b"\x00" * 58)  # 32-bit: not ours
    assert read_deps(script) is None
