"""board/kiln/post-build.sh, run as buildroot would run it, on a small fake target tree:
/init, the trusted keys, pruning and .pyc (the Python here stands in for buildroot's host
Python, so the fake target's stdlib directory carries this Python's version)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from initramfs.staging import init_script
from tests.buildroot.layout import TREE

SCRIPT = TREE / "board/kiln/post-build.sh"
PYTHON = f"python{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True)
class Fake:
    target: Path
    host: Path
    config: Path
    keys: Path

    def run(self) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "HOST_DIR": str(self.host),
               "BR2_CONFIG": str(self.config), "BR2_EXTERNAL_KILN_PATH": str(TREE)}
        return subprocess.run(["bash", str(SCRIPT), str(self.target)], env=env, text=True,
                              capture_output=True, check=False, timeout=120)


@pytest.fixture
def fake(tmp_path: Path, signing_dir: Path) -> Fake:
    target, host, keys = tmp_path / "target", tmp_path / "host", tmp_path / "keys"
    lib = target / "usr/lib" / PYTHON
    for relative, text in {"json/__init__.py": "X = 1\n", "idlelib/x.py": "",
                           "site-packages/demo.py": "def f():\n    return 2\n",
                           "site-packages/demo/__pycache__/stale.cpython-0.pyc": "junk"}.items():
        (lib / relative).parent.mkdir(parents=True, exist_ok=True)
        (lib / relative).write_text(text)
    (target / "usr/share/doc/eudev").mkdir(parents=True)
    (target / "usr/lib/libstatic.a").write_text("")
    (host / "bin").mkdir(parents=True)
    (host / "bin/python3").symlink_to(sys.executable)
    keys.mkdir()
    shutil.copy(signing_dir / "test.pub", keys / "release.pub")
    (keys / "README").write_text("not a key\n")
    config = tmp_path / ".config"
    config.write_text(f'BR2_PACKAGE_KILN=y\nBR2_PACKAGE_KILN_TRUSTED_KEYS_DIR="{keys}"\n')
    return Fake(target=target, host=host, config=config, keys=keys)


@pytest.mark.allow_commands("bash")
def test_it_makes_the_target_a_kiln_ramdisk(fake: Fake) -> None:
    result = fake.run()
    assert result.returncode == 0, result.stderr
    init = fake.target / "init"
    assert init.read_text() == init_script("/usr/bin/python3")
    assert os.access(init, os.X_OK)
    assert sorted(p.name for p in (fake.target / "etc/kiln/keys").iterdir()) == ["release.pub"]
    assert (fake.target / "etc/kiln/keys/release.pub").read_bytes() == \
        (fake.keys / "release.pub").read_bytes()
    lib = fake.target / "usr/lib" / PYTHON
    assert not (lib / "idlelib").exists()
    assert not (fake.target / "usr/share/doc").exists()
    assert not (fake.target / "usr/lib/libstatic.a").exists()
    assert not (lib / "site-packages/demo/__pycache__/stale.cpython-0.pyc").exists()
    tag = sys.implementation.cache_tag
    for pyc in (lib / f"json/__pycache__/__init__.{tag}.pyc",
                lib / f"site-packages/__pycache__/demo.{tag}.pyc"):
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b01, f"{pyc} is not an unchecked-hash .pyc"


@pytest.mark.allow_commands("bash")
def test_keys_of_an_earlier_build_do_not_linger(fake: Fake) -> None:
    stale = fake.target / "etc/kiln/keys/revoked.pub"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    assert fake.run().returncode == 0
    assert not stale.exists()


@pytest.mark.allow_commands("bash")
def test_a_private_key_is_refused(fake: Fake, signing_dir: Path) -> None:
    shutil.copy(signing_dir / "test.key", fake.keys / "oops.pem")
    result = fake.run()
    assert result.returncode == 1
    assert f"{fake.keys}/oops.pem holds a private key: only public keys go into the ramdisk" \
        in result.stderr


@pytest.mark.allow_commands("bash")
def test_a_directory_without_keys_is_refused(fake: Fake) -> None:
    (fake.keys / "release.pub").unlink()
    result = fake.run()
    assert result.returncode == 1
    assert f"no *.pub or *.pem key in {fake.keys}: a ramdisk needs at least one trusted key" \
        in result.stderr


@pytest.mark.allow_commands("bash")
def test_the_keys_option_is_required(fake: Fake) -> None:
    fake.config.write_text('BR2_PACKAGE_KILN=y\nBR2_PACKAGE_KILN_TRUSTED_KEYS_DIR=""\n')
    result = fake.run()
    assert result.returncode == 1
    assert "BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR is empty" in result.stderr
    assert not (fake.target / "etc/kiln/keys").exists()


@pytest.mark.allow_commands("bash")
def test_a_host_python_of_another_version_is_refused(fake: Fake) -> None:
    (fake.target / "usr/lib" / PYTHON).rename(fake.target / "usr/lib/python3.99")
    result = fake.run()
    assert result.returncode == 1
    assert f"host {PYTHON} cannot compile for the target's python3.99" in result.stderr


def test_buildroot_can_execute_it() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
