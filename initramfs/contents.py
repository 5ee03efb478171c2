"""What a Kiln ramdisk must contain: one declaration for every builder.

The Debian-based builder (`initramfs.builder`) installs from it, checks the result against
it, and the QEMU tests prove it inside a VM; the buildroot tree is checked against the same
declaration, so a dependency added in one place and not the other fails a test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RamdiskContents:
    # Debian packages to start from; their dependencies follow, minus `excluded_packages`.
    debian_packages: tuple[str, ...]
    # Never installed: maintainer-script machinery, alternatives we do not use, bulk.
    excluded_packages: tuple[str, ...]
    # Virtual package → the real package that provides it.
    virtual_providers: tuple[tuple[str, str], ...]
    # Must import inside the ramdisk (checked at build time and in the VM).
    python_modules: tuple[str, ...]
    # Must be found on PATH inside the ramdisk.
    tools: tuple[str, ...]
    # Kernel modules to carry, with their dependencies (udev loads them on demand).
    kernel_modules: tuple[str, ...]
    # The project's own packages that run on the appliance.
    kiln_packages: tuple[str, ...]
    # GRUB platforms the ramdisk builds boot images for (/usr/lib/grub/<platform>/: modules).
    grub_platforms: tuple[str, ...] = ()


CONTENTS = RamdiskContents(
    debian_packages=(
        "python3.11-minimal", "libpython3.11-stdlib",
        "python3-pyudev", "python3-parted", "python3-pyroute2", "python3-requests",
        "python3-cryptography", "python3-zstandard",
        "udev", "kmod", "util-linux", "mount", "fdisk", "e2fsprogs", "dosfstools",
        "efibootmgr", "nvme-cli", "hdparm", "tar", "zstd", "busybox-static",
        "ca-certificates",
        "grub-common", "grub-pc-bin", "grub-efi-amd64-bin",  # boot setup (recovery.bootsetup)
    ),
    excluded_packages=(
        "adduser", "base-files", "debconf", "debianutils", "dpkg", "init-system-helpers",
        "install-info", "libc-bin", "logsave", "lsb-base", "media-types", "openssl", "passwd",
        "perl-base", "python3", "python3-minimal", "python3.11", "readline-common",
        "sensible-utils", "systemd", "systemd-sysv", "sysvinit-utils", "tzdata", "usrmerge",
        # Only for Python's nis and dbm modules, which the ramdisk drops.
        "libdb5.3", "libnsl2", "libtirpc3", "libtirpc-common", "libgssapi-krb5-2",
        "libkrb5-3", "libk5crypto3", "libkrb5support0", "libkeyutils1",
    ),
    virtual_providers=(
        ("python3-cffi-backend-api-min", "python3-cffi-backend"),
        ("python3-cffi-backend-api-max", "python3-cffi-backend"),
        ("debconf-2.0", "debconf"),
    ),
    python_modules=(
        "pyudev", "parted", "pyroute2", "requests", "cryptography.hazmat.primitives.asymmetric"
        ".ed25519", "zstandard", "sqlite3", "ssl", "ctypes", "json", "hashlib",
        "kiln", "kiln.image.reader", "kiln.image.extract", "initramfs.init", "recovery.store",
    ),
    tools=(
        "sh", "mount", "umount", "switch_root", "modprobe", "udevadm", "blkid", "lsblk",
        "sfdisk", "partx", "wipefs", "mkfs.ext4", "e2fsck", "mkfs.vfat", "efibootmgr", "nvme",
        "hdparm", "tar", "zstd", "dmidecode", "grub-mkimage", "grub-mkstandalone",
    ),
    kernel_modules=(
        "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "virtio_rng",
        "ahci", "sd_mod", "sr_mod", "nvme",
        "usb_storage", "uas", "xhci_pci", "ehci_pci", "usbhid", "hid_generic",
        "e1000", "e1000e",
        "ext4", "crc32c_generic", "crc32c_intel", "vfat", "nls_cp437", "nls_iso8859_1",
        "nls_utf8", "efivarfs", "loop",
    ),
    kiln_packages=("kiln", "initramfs", "provision", "recovery", "erase"),
    grub_platforms=("i386-pc", "x86_64-efi"),
)
