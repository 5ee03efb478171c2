from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.buildroot.layout import REPO, TREE


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of buildroot/ (with the pyproject.toml above it) for a test to break."""
    checkout = tmp_path / "kiln"
    shutil.copytree(TREE, checkout / "buildroot")
    shutil.copy(REPO / "pyproject.toml", checkout / "pyproject.toml")
    return checkout / "buildroot"

