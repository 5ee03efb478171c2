"""The server's settings: one frozen value, built once from the command line.

The data directory holds everything the embedded default needs: the SQLite database, the
content-addressed image and file store, the key that encrypts escrowed credentials (never in
the database) and the trusted image-signing keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import KilnError

ENVIRONMENT_KEY = "KILN_SERVER_CONFIG"  # hands the config to uvicorn's worker processes


class ConfigError(KilnError):
    pass


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    data_dir: Path
    database_url: str = ""  # empty: SQLite in data_dir
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    public_url: str = ""  # how units and operators reach us; empty: from each request
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_cert: Path | None = None  # named in manufData: what units verify us against
    secret_key_file: Path | None = None  # default: data_dir/secret.key
    trust_dir: Path | None = None  # image-signing public keys; default: data_dir/keys
    max_upload_bytes: int = 64 * 1024**3
    # DDI: proxies that terminate devices' TLS and vouch for their client certificates
    # (X-Controller-Id, X-Authority); how long a worker keeps a poll answer at most; how often
    # each worker reads the change feed (a change made through another worker reaches
    # devices within it); how often last-seen times are written.
    ddi_trusted_proxies: tuple[str, ...] = ()
    ddi_cache_seconds: float = 600.0
    ddi_sync_seconds: float = 1.0
    ddi_flush_seconds: float = 5.0

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'kiln.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def effective_secret_key_file(self) -> Path:
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def effective_trust_dir(self) -> Path:
        return self.trust_dir or self.data_dir / "keys"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    def validate(self) -> None:
        problems = []
        if self.workers < 1:
            problems.append("--workers must be at least 1")
        if self.is_sqlite and self.workers > 1:
            problems.append("SQLite takes one worker; use --database-url postgresql+psycopg://… "
                            "for several")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("--tls-cert and --tls-key go together")
        for path in (self.tls_cert, self.tls_key, self.ca_cert):
            if path is not None and not path.is_file():
                problems.append(f"{path}: no such file")
        url = self.effective_database_url
        if not (url.startswith("sqlite:///") or url.startswith("postgresql")):
            problems.append(f"unsupported database URL {url!r}: use sqlite:///PATH or "
                            "postgresql+psycopg://USER:PASSWORD@HOST/DB")
        if self.ddi_cache_seconds < 0 or self.ddi_flush_seconds <= 0 \
                or self.ddi_sync_seconds <= 0:
            problems.append("--ddi-cache-seconds must be 0 or more, --ddi-flush-seconds and "
                            "--ddi-sync-seconds more than 0")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            problems.append(f"--public-url {self.public_url!r} must start with http(s)://")
        if problems:
            raise ConfigError("; ".join(problems))

    def to_environment(self) -> str:
        return json.dumps({key: str(value) if isinstance(value, Path) else value
                           for key, value in dataclasses.asdict(self).items()})

    @classmethod
    def from_environment(cls) -> ServerConfig:
        try:
            raw: dict[str, Any] = json.loads(os.environ[ENVIRONMENT_KEY])
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{ENVIRONMENT_KEY} is not set to the server's settings") from e
        paths = {"data_dir", "tls_cert", "tls_key", "ca_cert", "secret_key_file", "trust_dir"}
        values: dict[str, Any] = {key: Path(value) if key in paths and value is not None else value
                  for key, value in raw.items()}
        values["ddi_trusted_proxies"] = tuple(values.get("ddi_trusted_proxies", ()))
        return cls(**values)
