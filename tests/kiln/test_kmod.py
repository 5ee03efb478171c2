from __future__ import annotations

from pathlib import Path

import pytest

from kiln.kmod import ModuleError, module_closure, module_name


def kernel_tree(root: Path) -> Path:
    (root / "modules.dep").write_text(
        "kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko "
        "kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko\n"
        "kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko "
        "kernel/drivers/scsi/scsi_mod.ko\n"
        "kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko\n"
        "kernel/drivers/scsi/scsi_mod.ko:\n"
        "kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko\n"
        "kernel/drivers/nvme/host/nvme-core.ko:\n"
        "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n"
        "kernel/fs/jbd2/jbd2.ko:\n"
        "kernel/crypto/crc32c_generic.ko:\n"
    )
    (root / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    (root / "modules.softdep").write_text(
        "# comment\nsoftdep ext4 pre: crc32c_generic crc32c post: something\n"
    )
    return root


def test_closure_orders_dependencies_first_and_skips_builtins(tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path)
    assert module_closure(tree, ["virtio_pci", "ahci", "sd_mod", "nvme-core"]) == [
        "kernel/drivers/scsi/scsi_mod.ko", "kernel/drivers/ata/libata.ko",
        "kernel/drivers/ata/libahci.ko", "kernel/drivers/ata/ahci.ko",
        "kernel/drivers/scsi/sd_mod.ko", "kernel/drivers/nvme/host/nvme-core.ko",
    ]


def test_soft_dependencies_that_are_modules_come_first(tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path)
    assert module_closure(tree, ["ext4"]) == [
        "kernel/crypto/crc32c_generic.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko",
    ]
    assert module_closure(tree, ["ext4"], softdeps=False) == [
        "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko",
    ]


def test_an_unknown_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match="no kernel module 'e1000'"):
        module_closure(kernel_tree(tmp_path), ["e1000"])


def test_module_names() -> None:
    assert module_name("kernel/drivers/nvme/host/nvme-core.ko.xz") == "nvme_core"
