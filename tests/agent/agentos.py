"""OS images for the QEMU update test: an OS that runs the real update agent, and one that
cannot boot.

The agent OS is the session's Kiln ramdisk tree (Debian's Python, busybox, the Kiln packages)
with the project's `agent/` added and an init of its own: it mounts RECOVERY and DATA,
reports on the console (a line starting with `AGENT_MARK`), leaves a file on DATA the first
time, brings the network up with the ramdisk's DHCP (`initramfs.network`), and runs
`python3 -m agent run`, which confirms the boot, reports and, given an update, reboots into
its restore. The broken OS prints its line and reboots without confirming its boot."""

from __future__ import annotations

import shutil
from pathlib import Path

import zstandard

from initramfs.builder import RamdiskBuild
from kiln.image.builder import ImageSpec, build_image
from kiln.image.signing import SigningKey
from kiln.process import run
from tests.initramfs.conftest import make_test_root

AGENT_MARK = "KILN-AGENT-OS:"
PROJECT = Path(__file__).resolve().parents[2]
SITE = "usr/lib/python3/dist-packages"
LEFT_OUT = ("init", "usr/lib/grub", "lib/modules")  # the ramdisk's own: not the OS's
AGENT_INIT = f"""#!/bin/busybox sh
b=/bin/busybox
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
$b mount -t proc proc /proc
$b mount -o remount,rw /
$b mount -t sysfs sysfs /sys
$b mount -t devtmpfs devtmpfs /dev
$b mount -t tmpfs tmpfs /run
$b mount -t tmpfs tmpfs /tmp
$b mkdir -p /recovery /data
$b mount "$($b findfs LABEL=RECOVERY)" /recovery
$b mount "$($b findfs LABEL=DATA)" /data
data=$($b cat /data/customer.txt 2>/dev/null || $b echo none)
$b echo "{AGENT_MARK} up version $($b cat /etc/version) data $data"
[ "$data" = none ] && $b echo "keep me" > /data/customer.txt
$b ip link set lo up
/usr/bin/python3.11 -c 'from initramfs.network import bring_up; bring_up()'
/usr/bin/python3.11 -m agent -v run --poll-seconds 2 --cycles 3 \\
    --reboot-command "/bin/busybox reboot -f"
$b echo "{AGENT_MARK} agent exited $?"
$b sync
$b umount /data /recovery
$b poweroff -f
"""
BROKEN_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox echo "{AGENT_MARK} up version $(/bin/busybox cat /etc/version) cannot boot"
/bin/busybox reboot -f
"""


def ramdisk_tree(ramdisk: RamdiskBuild, work: Path) -> Path:
    """The ramdisk's files, unpacked once per work directory."""
    tree = work / "ramdisk-tree"
    if tree.is_dir():
        return tree
    archive = work / "ramdisk.cpio"
    with ramdisk.initrd.open("rb") as source, archive.open("wb") as out:
        zstandard.ZstdDecompressor().copy_stream(source, out)
    tree.mkdir(parents=True)
    run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", "-F", archive], cwd=tree)
    archive.unlink()
    for name in LEFT_OUT:
        path = tree / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for node in (tree / "dev").iterdir():  # device nodes: devtmpfs gives the OS its own
        node.unlink()
    return tree


def _image(root: Path, out: Path, *, key: SigningKey, version: str) -> Path:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "version").write_text(f"{version}\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    build_image(root, out, spec=ImageSpec(product="demo", version=version, build=0,
                                          variants=("qemu-lab",),
                                          created="2026-11-01T00:00:00Z"), keys=[key])
    return out


def make_agent_os_image(work: Path, *, ramdisk: RamdiskBuild, key: SigningKey,
                        version: str) -> Path:
    root = work / f"agent-os-{version}"
    shutil.copytree(ramdisk_tree(ramdisk, work), root, symlinks=True)
    shutil.copytree(PROJECT / "agent", root / SITE / "agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "README.md"))
    for mount_point in ("recovery", "data"):
        (root / mount_point).mkdir(exist_ok=True)
    init = root / "sbin" / "init"
    init.unlink(missing_ok=True)
    init.write_text(AGENT_INIT)
    init.chmod(0o755)
    return _image(root, work / f"agent-os-{version}.upd", key=key, version=version)


def make_broken_os_image(work: Path, *, key: SigningKey, version: str) -> Path:
    root = make_test_root(work / f"broken-os-{version}", flag=False)
    (root / "sbin" / "init").write_text(BROKEN_INIT)
    return _image(root, work / f"broken-os-{version}.upd", key=key, version=version)
