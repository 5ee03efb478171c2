"""The unit's credentials at manufacture: fetched from the server over the line's
authenticated (and, with TLS, pinned) channel; the admin password reaches RECOVERY only as its
SHA-512 crypt hash, for the restore path to write into the OS's /etc/shadow; the device token
the agent needs is readable by root only. Neither is ever logged."""

from __future__ import annotations

import os

from kiln.fsutil import atomic_write_bytes
from kiln.serverclient import ServerClient, UnitCredentials
from kiln.shadow import sha512_crypt
from recovery.layout import RecoveryLayout, StateFile


def store_credentials(client: ServerClient, *, serial: str, layout: RecoveryLayout) -> None:
    write_credentials(client.credentials(serial), layout=layout)


def write_credentials(credentials: UnitCredentials, *, layout: RecoveryLayout) -> None:
    """Credentials fetched earlier (manufacture asks before any disk is touched) to `state/`."""
    layout.state.mkdir(parents=True, exist_ok=True)
    for name, text in ((StateFile.ADMIN_HASH, sha512_crypt(credentials.admin_password) + "\n"),
                       (StateFile.DEVICE_TOKEN, credentials.device_token)):
        path = layout.state_file(name)
        atomic_write_bytes(path, text.encode(), mode=0o600)
        os.chmod(path, 0o600)  # whatever the umask
