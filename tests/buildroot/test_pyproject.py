"""package/kiln builds its wheel from the checkout's pyproject.toml cut down to the appliance
packages (initramfs.buildroot.appliance_pyproject); shown here by building that wheel."""

from __future__ import annotations

import importlib
import shutil
import tarfile
import tomllib
from pathlib import Path

import pytest

from initramfs.buildroot import appliance_pyproject, main
from initramfs.contents import CONTENTS
from tests.buildroot.layout import REPO

PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "kiln"
version = "1.2.3"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["qemu.qmp>=0.0.6", "requests>=2.28"]

[project.scripts]
kiln = "kiln.cli:main"
kiln-lab = "lab.cli:main"

[project.entry-points."kiln.commands"]
image = "kiln.image.commands:add_commands"
lab = "lab.commands:add_commands"
server = "server.commands:add_commands"
recovery = "recovery.commands:add_commands"
"""


def test_only_the_appliance_packages_and_their_entry_points_remain() -> None:
    data = tomllib.loads(appliance_pyproject(PYPROJECT, ("kiln", "recovery")))
    assert data["build-system"] == {"requires": ["setuptools>=77"],
                                    "build-backend": "setuptools.build_meta"}
    assert data["project"] == {
        "name": "kiln", "version": "1.2.3", "requires-python": ">=3.11",
        "scripts": {"kiln": "kiln.cli:main"},
        "entry-points": {"kiln.commands": {"image": "kiln.image.commands:add_commands",
                                           "recovery": "recovery.commands:add_commands"}},
    }
    assert data["tool"]["setuptools"]["packages"]["find"]["include"] == [
        "kiln", "kiln.*", "recovery", "recovery.*"]


def test_the_pyproject_command_reads_the_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pyproject", str(REPO / "pyproject.toml")]) == 0
    data = tomllib.loads(capsys.readouterr().out)
    assert data["project"]["version"] == tomllib.loads(
        (REPO / "pyproject.toml").read_text())["project"]["version"]
    commands = data["project"]["entry-points"]["kiln.commands"]
    assert commands and {t.split(".")[0] for t in commands.values()} <= set(CONTENTS.kiln_packages)
    assert "lab" not in commands


@pytest.mark.filterwarnings("ignore:Support for .*tool.setuptools.* is still")
def test_setuptools_finds_the_appliance_packages_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata setuptools makes from it, as for the wheel buildroot builds (an sdist
    here: the venv's setuptools builds wheels only with the `wheel` package installed)."""
    build = importlib.import_module("setuptools.build_meta")  # in-process PEP 517 backend
    source = tmp_path / "src"
    for package in (*CONTENTS.kiln_packages, "lab", "server"):  # as the rsync copies them
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (source / "pyproject.toml").write_text(
        appliance_pyproject((REPO / "pyproject.toml").read_text(), CONTENTS.kiln_packages))
    monkeypatch.chdir(source)
    with tarfile.open(tmp_path / build.build_sdist(str(tmp_path))) as sdist:
        names = sdist.getnames()

        def read(name: str) -> str:
            member = sdist.extractfile(next(n for n in names if n.endswith(f".egg-info/{name}")))
            assert member is not None
            return member.read().decode()

        top_level, entry_points = read("top_level.txt"), read("entry_points.txt")
    assert sorted(top_level.split()) == sorted(CONTENTS.kiln_packages)
    assert not any(f"/{p}/" in n for n in names for p in ("lab", "server"))
    assert "recovery = recovery.commands:add_commands" in entry_points
    assert "kiln = kiln.cli:main" in entry_points
    assert "lab" not in entry_points
