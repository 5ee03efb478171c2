"""`kiln server`: run the server; `migrate` and `create-admin` manage it offline."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from kiln.errors import KilnError
from server.accounts import any_admin, create_token, create_user
from server.app import prepare
from server.auth import Scope
from server.config import ENVIRONMENT_KEY, ServerConfig
from server.db.copy import copy_database
from server.db.engine import make_engine
from server.db.migrate import head_revision
from server.errors import ApiError
from server.logs import log_config
from server.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from kiln.cli import CommandTree


def default_data_dir() -> Path:
    if os.environ.get("KILN_SERVER_DATA"):
        return Path(os.environ["KILN_SERVER_DATA"])
    if os.geteuid() == 0:
        return Path("/var/lib/kiln/server")
    return Path.home() / ".local/share/kiln/server"


def add_commands(tree: CommandTree) -> None:
    server = tree.command("server", "run the Kiln factory and fleet server (and manage it)")
    server.add_argument("--data-dir", type=Path, default=None,
                        help="where the SQLite database, the image store, the server key and "
                             "trusted keys live (default: $KILN_SERVER_DATA, "
                             "/var/lib/kiln/server as root, else ~/.local/share/kiln/server)")
    server.add_argument("--database-url", default=os.environ.get("KILN_DATABASE_URL", ""),
                        help="postgresql+psycopg://USER:PASSWORD@HOST/DB (default: SQLite in "
                             "the data directory)")
    server.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    server.add_argument("--workers", type=int, default=None,
                        help="worker processes (PostgreSQL only; default: CPUs there, 1 on "
                             "SQLite)")
    server.add_argument("--public-url", default="",
                        help="the URL units and operators reach this server at (behind a "
                             "proxy); default: the URL each request came to")
    server.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate")
    server.add_argument("--tls-key", type=Path, help="… and this private key")
    server.add_argument("--ca-cert", type=Path,
                        help="the CA units verify this server against (named in manufData)")
    server.add_argument("--secret-key-file", type=Path,
                        help="the key that seals escrowed credentials (default: "
                             "DATA_DIR/secret.key; keep a backup outside the database's)")
    server.add_argument("--trust-dir", type=Path,
                        help="image-signing public keys (*.pub) uploads must be signed by "
                             "(default: DATA_DIR/keys)")
    server.add_argument("--ddi-trusted-proxy", action="append", default=[], metavar="ADDRESS",
                        help="a reverse proxy (by address) whose X-Controller-Id and "
                             "X-Authority headers vouch for a device's client certificate "
                             "(repeat for several)")
    server.add_argument("--ddi-cache-seconds", type=float, default=600.0,
                        help="how long a worker keeps a device's poll answer at most "
                             "(default 600; any change drops it sooner, through the change "
                             "feed; 0: no cache)")
    server.add_argument("--ddi-sync-seconds", type=float, default=1.0,
                        help="how often each worker reads the change feed: how stale a poll "
                             "answer another worker made may be (default 1)")
    server.add_argument("--ddi-flush-seconds", type=float, default=5.0,
                        help="how often devices' last-seen times are written (default 5)")
    server.set_defaults(handler=_run)
    sub = server.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    sub.required = False
    sub.add_parser("migrate", help="bring the database schema up to date, then exit") \
        .set_defaults(handler=_migrate)
    admin = sub.add_parser("create-admin", help="create an admin operator and print a "
                           "one-time password and API token")
    admin.add_argument("username")
    admin.set_defaults(handler=_create_admin)
    move = sub.add_parser("copy-database", help="copy every record into another (empty) "
                          "database, e.g. from the embedded SQLite to PostgreSQL")
    move.add_argument("--to", required=True, metavar="DATABASE_URL",
                      help="postgresql+psycopg://USER:PASSWORD@HOST/DB")
    move.set_defaults(handler=_copy_database)


def config_from(arguments: argparse.Namespace) -> ServerConfig:
    host, _, port = arguments.listen.rpartition(":")
    if not host or not port.isdigit():
        raise KilnError(f"--listen {arguments.listen!r}: expected HOST:PORT")
    database_url = arguments.database_url
    workers = (arguments.workers if arguments.workers is not None
               else 1 if not database_url else min(os.cpu_count() or 1, 8))
    return ServerConfig(
        data_dir=(arguments.data_dir or default_data_dir()).absolute(),
        database_url=database_url, host=host.strip("[]"), port=int(port), workers=workers,
        public_url=arguments.public_url.rstrip("/"), tls_cert=arguments.tls_cert,
        tls_key=arguments.tls_key, ca_cert=arguments.ca_cert,
        secret_key_file=arguments.secret_key_file, trust_dir=arguments.trust_dir,
        ddi_trusted_proxies=tuple(arguments.ddi_trusted_proxy),
        ddi_cache_seconds=arguments.ddi_cache_seconds,
        ddi_sync_seconds=arguments.ddi_sync_seconds,
        ddi_flush_seconds=arguments.ddi_flush_seconds)


def _run(arguments: argparse.Namespace) -> int:
    config = config_from(arguments)
    prepare(config)
    _hint_first_admin(config)
    os.environ[ENVIRONMENT_KEY] = config.to_environment()
    if config.workers > 1:
        metrics_dir = config.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        os.environ[MULTIPROC_ENV] = str(metrics_dir)
    scheme = "https" if config.tls_cert else "http"
    print(f"kiln server: {scheme}://{config.host}:{config.port}/ui/ (data in {config.data_dir},"
          f" database {'SQLite' if config.is_sqlite else 'PostgreSQL'}, "
          f"{config.workers} worker(s))", file=sys.stderr, flush=True)
    uvicorn.run("server.app:app_from_environment", factory=True, host=config.host,
                port=config.port, workers=config.workers if config.workers > 1 else None,
                log_config=log_config(), access_log=False, timeout_graceful_shutdown=20,
                ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key,
                proxy_headers=False)  # applied in the app, after the peer is noted (DDI)
    return 0


def _hint_first_admin(config: ServerConfig) -> None:
    engine = make_engine(config.effective_database_url)
    try:
        with engine.connect() as connection:
            if any_admin(connection):
                return
    finally:
        engine.dispose()
    data = f"--data-dir {shlex.quote(str(config.data_dir))}"
    print(f"kiln server: no operator yet. Create the first admin (it prints a one-time "
          f"password and API token; there is no default password):\n"
          f"    kiln server {data} create-admin NAME", file=sys.stderr, flush=True)


def _migrate(arguments: argparse.Namespace) -> int:
    prepare(config_from(arguments))
    print(f"kiln server: database schema at revision {head_revision()}")
    return 0


def _create_admin(arguments: argparse.Namespace) -> int:
    config = config_from(arguments)
    prepare(config)
    engine = make_engine(config.effective_database_url)
    try:
        with engine.begin() as connection:
            user = create_user(connection, username=arguments.username, scopes=[Scope.ADMIN])
            _token_id, token = create_token(connection, user_id=user.user_id,
                                            name="created with create-admin",
                                            scopes=[Scope.ADMIN])
    except ApiError as e:
        raise KilnError(e.detail) from None
    finally:
        engine.dispose()
    print(f"admin operator: {user.username}\n"
          f"one-time password (web UI login; shown only now): {user.password}\n"
          f"API token (Authorization: Bearer …; shown only now): {token}")
    return 0


def _copy_database(arguments: argparse.Namespace) -> int:
    config = config_from(arguments)
    prepare(config)
    target_config = dataclasses.replace(config, database_url=arguments.to, workers=1)
    target_config.validate()
    source = make_engine(config.effective_database_url)
    target = make_engine(arguments.to)
    try:
        copied = copy_database(source, target)
    finally:
        source.dispose()
        target.dispose()
    for table in copied:
        print(f"{table.name:20} {table.rows:>10} rows")
    print("kiln server: copied; now run it with --database-url set to that URL and the same "
          "--data-dir (it keeps the image store and the server key)")
    return 0
