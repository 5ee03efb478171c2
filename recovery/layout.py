"""What lives on the RECOVERY volume: the contract between manufacture, restore and the OS.

    Image/            signed images; Image/quarantine/ for bad ones (see recovery.store)
    log/              one log file per ramdisk run, and events not yet sent
    state/            restore journal, image history, identity and factory configuration
    requests/         restore.json / erase.json, written from the running OS
    keys/             trusted image-signing public keys
    certificates/     erase certificates (see erase.certificate)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

RECOVERY_LABEL = "RECOVERY"
PRIMARY_LABEL = "PRIMARY"
DATA_LABEL = "DATA"
FLAG_FILE = "boot.normal"  # on PRIMARY's root: written last by a restore


class StateFile(enum.StrEnum):
    """The files in RECOVERY's `state/`: manufacture writes them, restore reads them."""

    IDENTITY = "identity.json"  # serial, variant, profile URL, run id (manufacture)
    FACTORY = "factory.json"  # the manufData the unit was made with
    SERVER = "server.json"  # the server's endpoints (and CA)
    DISKS = "disks.json"  # the partition plans applied: where PRIMARY and DATA are
    ADMIN_HASH = "admin-password.sha512crypt"  # 0600
    DEVICE_TOKEN = "device-token"  # noqa: S105 - a file name; 0600
    MACHINE_ID = "machine-id"  # the OS's /etc/machine-id, the same across restores
    JOURNAL = "restore-journal.json"  # a restore under way (see recovery.restore)
    INSTALLED = "installed.json"  # the image the last restore put on PRIMARY (recovery.boots)
    UNCONFIRMED_BOOTS = "unconfirmed-boots.json"  # hand-overs the OS has not confirmed
    ERASE_JOURNAL = "erase-journal.json"  # an erase under way (see recovery.erasure)
    NO_IMAGE_BOOTS = "no-image-boots"  # boots in a row with no good image (the back-off)
    ERASE_FAILED_BOOTS = "erase-failed-boots"  # erases in a row that failed (the back-off)
    BOOT_FILES = "boot-files.json"  # the Kiln boot files' version (recovery.bootfiles)


class Request(enum.StrEnum):
    RESTORE = "restore"
    ERASE = "erase"


@dataclass(frozen=True)
class RecoveryLayout:
    root: Path

    @property
    def images(self) -> Path:
        return self.root / "Image"

    @property
    def quarantine(self) -> Path:
        return self.images / "quarantine"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def state_file(self, name: StateFile) -> Path:
        return self.state / name.value

    @property
    def network(self) -> Path:
        """An operator's saved systemd-networkd files, restored into the OS when present."""
        return self.state / "network"

    @property
    def certificates(self) -> Path:
        """Erase certificates (`erase-<run>.json`; `.sent` beside each the server took)."""
        return self.root / "certificates"

    @property
    def requests(self) -> Path:
        return self.root / "requests"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def request_file(self, request: Request) -> Path:
        return self.requests / f"{request.value}.json"

    def requested(self, request: Request) -> bool:
        return self.request_file(request).is_file()
