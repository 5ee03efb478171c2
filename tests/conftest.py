"""Shared test set-up.

Every test runs with a guard on `subprocess.Popen`: starting a program the test did not allow
(with `@pytest.mark.allow_commands("tar", ...)`) fails the test. The guard sits under
`kiln.process`, so code that bypasses the chokepoint is caught too.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from initramfs.builder import RamdiskBuild, build_ramdisk
from kiln.image.signing import SigningKey, TrustStore, generate_keypair, load_signing_key
from kiln.image.signing import load_public_key as load_public
from kiln.process import run
from lab import Lab
from tests.provision.qemu_factory import Factory, running_factory
from tests.recovery.loopdisk import DISK_BYTES, AttachLoop
from tests.workers import one_worker_at_a_time, summary_lines


class UnexpectedCommand(AssertionError):
    pass


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    """The power-cut tests' tallies ("power cuts: tried N, converged N"), from every worker."""
    lines = summary_lines(config)
    if lines:
        terminalreporter.section("reports")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def subprocess_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    allowed: set[str] = set()
    for marker in request.node.iter_markers("allow_commands"):
        allowed.update(marker.args)
    real_popen = subprocess.Popen

    class GuardedPopen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            program = os.path.basename(os.fspath(args[0] if isinstance(args, list | tuple)
                                                 else args))
            if program not in allowed:
                raise UnexpectedCommand(
                    f"test ran {program!r} without @pytest.mark.allow_commands({program!r})"
                )
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", GuardedPopen)


@pytest.fixture(scope="session")
def signing_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's keys: one pair for every worker, so they share one ramdisk build."""
    with one_worker_at_a_time(tmp_path_factory, "keys") as shared:
        directory = shared / "keys"
        if not (directory / "other.pub").exists():
            directory.mkdir(exist_ok=True)
            generate_keypair(directory / "test.key", directory / "test.pub")
            generate_keypair(directory / "other.key", directory / "other.pub")
    return directory


@pytest.fixture(scope="session")
def signing_key(signing_dir: Path) -> SigningKey:
    return load_signing_key(signing_dir / "test.key")


@pytest.fixture(scope="session")
def other_key(signing_dir: Path) -> SigningKey:
    return load_signing_key(signing_dir / "other.key")


@pytest.fixture(scope="session")
def trust(signing_dir: Path) -> TrustStore:
    return TrustStore.of(load_public(signing_dir / "test.pub"))


@pytest.fixture(scope="session")
def ramdisk(signing_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RamdiskBuild:
    """The Kiln kernel and ramdisk, built once per session (cached across sessions by its
    inputs); the tests that boot it (tests/initramfs, tests/recovery) share it."""
    with one_worker_at_a_time(tmp_path_factory, "builds"):
        return build_ramdisk(keys=[signing_dir / "test.pub"])


@pytest.fixture(scope="session")
def lab() -> Lab:
    return Lab.detect()


@pytest.fixture
def chdir_tmp(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def factory(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey,
            signing_dir: Path, ramdisk: RamdiskBuild) -> Iterator[Factory]:
    """The QEMU tests' factory: a `kiln server` the guests reach at 10.0.2.2 (see
    tests/provision/qemu_factory.py)."""
    with running_factory(tmp_path_factory.mktemp("factory"), signing_key=signing_key,
                         public_key=signing_dir / "test.pub", ramdisk=ramdisk) as found:
        yield found


@pytest.fixture
def attach_loop(tmp_path: Path) -> Iterator[AttachLoop]:
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    attached: list[str] = []

    def attach(*, sector_size: int = 512, size: int = DISK_BYTES) -> Path:
        backing = tmp_path / f"disk{len(attached)}.img"
        with backing.open("wb") as f:
            f.truncate(size)  # sparse: costs nothing
        device = run(["losetup", "--find", "--show", "--partscan", "--sector-size",
                      str(sector_size), backing]).text.strip()
        attached.append(device)
        return Path(device)

    try:
        yield attach
    finally:
        for device in attached:
            run(["losetup", "--detach", device])
