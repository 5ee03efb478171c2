"""Erasing real block devices (loop devices), canaries read back with O_DIRECT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from erase import canary, certificate
from erase.capabilities import Capabilities, Method, Scope
from erase.methods import MethodFailed, Progress, Region, carry_out
from erase.run import erase_region
from kiln.blockdev import Disk, DiskTransport
from tests.recovery.loopdisk import AttachLoop

pytestmark = pytest.mark.allow_commands("losetup", "blkdiscard")
MIB = 1 << 20
SIZE = 64 * MIB


def _capabilities(node: Path, *methods: Method) -> Capabilities:
    disk = Disk(name=node.name, path=str(node), sysfs_path="", size_bytes=SIZE, model="loop",
                vendor="", serial="L1", transport=DiskTransport.UNKNOWN, rotational=False,
                removable=False, read_only=False)
    return Capabilities(disk=disk, scope=Scope.PARTITION, discard=True, logical_sector=512,
                        methods=methods)


def _fill(node: Path, byte: bytes) -> None:
    with node.open("r+b") as handle:
        for _ in range(SIZE // MIB):
            handle.write(byte * MIB)


def test_canaries_survive_until_erased(attach_loop: AttachLoop) -> None:
    node = attach_loop(size=SIZE)
    placed = canary.place(node, size_bytes=SIZE, run_id="run-1")
    assert placed.offsets[0] == 0 and placed.offsets[-1] == SIZE - canary.BLOCK_BYTES
    assert len(placed.offsets) >= canary.SPREAD
    canary.write(placed)
    assert canary.surviving(placed) == placed.offsets
    with node.open("r+b") as handle:  # a single sector of one canary left is a survivor
        handle.seek(placed.offsets[1])
        handle.write(bytes(canary.BLOCK_BYTES - 512))
    with node.open("r+b") as handle:
        handle.seek(placed.offsets[2])
        handle.write(bytes(canary.BLOCK_BYTES))
    assert placed.offsets[1] in canary.surviving(placed)
    assert placed.offsets[2] not in canary.surviving(placed)
    assert canary.place(node, size_bytes=SIZE, run_id="run-2").offsets != placed.offsets


@pytest.mark.parametrize("method", [Method.DISCARD, Method.OVERWRITE])
def test_each_method_erases_a_real_device(attach_loop: AttachLoop, method: Method) -> None:
    node = attach_loop(size=SIZE)
    _fill(node, b"\xa5")
    lines: list[str] = []
    seen: list[int] = []
    result = erase_region(Region(node=node, size_bytes=SIZE, name="DATA"),
                          _capabilities(node, method), run_id="t", announce=lines.append,
                          progress=lambda done, total: seen.append(done))
    assert result.verified and result.method is method
    assert result.canaries_surviving == 0 and result.canaries_written >= canary.SPREAD
    with node.open("rb") as handle:
        assert handle.read(SIZE).count(b"\xa5") == 0
    if method is Method.OVERWRITE:
        assert seen[-1] == SIZE
    assert "erased with" in lines[-1]


def test_a_method_that_leaves_canaries_falls_back(attach_loop: AttachLoop) -> None:
    node = attach_loop(size=SIZE)

    def carry(method: Method, region: Region, capabilities: Capabilities, *,
              progress: Progress, root: Path) -> str:
        if method is Method.NVME_FORMAT_USER_DATA:
            raise MethodFailed("nvme-format-user-data: the controller said no")
        if method is Method.DISCARD:
            return "discard answered success"  # and did nothing, like some devices
        return carry_out(method, region, capabilities, progress=progress, root=root)

    lines: list[str] = []
    region = Region(node=node, size_bytes=SIZE, name="disk loop")
    result = erase_region(region, _capabilities(
        node, Method.NVME_FORMAT_USER_DATA, Method.DISCARD, Method.OVERWRITE), run_id="t",
        announce=lines.append, progress=lambda done, total: None, carry=carry)
    assert result.method is Method.OVERWRITE and result.verified
    assert [(a.method, a.ok) for a in result.attempts] == [
        (Method.NVME_FORMAT_USER_DATA, False), (Method.DISCARD, False),
        (Method.OVERWRITE, True)]
    assert "canaries survived" in result.attempts[1].detail
    assert sum("falling back" in line for line in lines) == 2

    document = certificate.certificate(run_id="r1", serial="UNIT-1", started_ns=0,
                                       finished_ns=2 * 10**9, results=[result], tool="test")
    assert document["result"] == "erased"
    [device] = document["devices"]
    assert (device["method"], device["nist_category"], device["verification"]) == (
        "overwrite", "clear", "passed")
    assert [a["result"] for a in device["attempts"]] == ["failed", "failed", "passed"]


def test_every_method_failing_is_a_failed_certificate(attach_loop: AttachLoop,
                                                       tmp_path: Path) -> None:
    node = attach_loop(size=SIZE)

    def refuse(method: Method, region: Region, capabilities: Capabilities, *,
               progress: Progress, root: Path) -> str:
        raise MethodFailed(f"{method}: refused")

    result = erase_region(Region(node=node, size_bytes=SIZE, name="PRIMARY"),
                          _capabilities(node, Method.DISCARD, Method.OVERWRITE), run_id="t",
                          announce=lambda line: None, progress=lambda d, t: None,
                          carry=refuse)
    assert not result.verified and result.method is None
    assert result.canaries_surviving == result.canaries_written
    document = certificate.certificate(run_id="r2", serial="UNIT-1", started_ns=0,
                                       finished_ns=1, results=[result], tool="test",
                                       interrupted_runs=["r1"])
    assert (document["result"], document["interrupted_runs"]) == ("failed", ["r1"])
    path = certificate.save(document, tmp_path / "certificates")
    assert path.name == "erase-r2.json" and json.loads(path.read_text()) == document
