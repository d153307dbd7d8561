"""The replication connection: slot commands, START_REPLICATION, frames in, status updates out.

The only module that talks the streaming replication protocol. It never advances the flush LSN
on its own: `confirm` is called by the pipeline after the sink committed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from cdc.errors import ConfigError, SourceUnavailable
from cdc.replication.frames import encode_standby_status, pg_epoch_us
from cdc.replication.lsn import Lsn
from cdc.replication.plugins import OutputPlugin

# CopyData frames taken from libpq's buffer per wake-up before yielding to the event loop.
MAX_FRAMES_PER_READ = 4096


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    consistent_point: Lsn
    snapshot_name: str


def plugin_refused(plugin: str, error: psycopg.Error) -> str:
    """What to do when the server will not load the slot's output plugin."""
    if isinstance(error, psycopg.errors.UndefinedFile):
        return (
            f"the source server has no {plugin} output plugin ({error}): install it there "
            f"(Debian/Ubuntu: the postgresql-NN-{plugin} package), or set source.plugin: pgoutput"
        )
    return (
        f"the source server refused the output plugin {plugin} ({error}): a superuser must add "
        "it to output_plugin_libraries (`cdc setup` prints the statement)"
    )


@dataclass(frozen=True, slots=True)
class SlotSpec:
    """The slot a stream reads: its name, its output plugin, and how it is created."""

    name: str
    plugin: OutputPlugin
    # Created (or marked) as a failover slot, synchronised to standbys (PostgreSQL 17+).
    failover: bool = False


class ReplicationStream:
    """A replication connection for one slot; synchronous commands, non-blocking reads."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], spec: SlotSpec):
        self._conn = conn
        self._spec = spec
        self._slot = spec.name
        self._streaming = False
        self.confirmed = Lsn(0)

    @classmethod
    def connect(cls, dsn: str, spec: SlotSpec) -> ReplicationStream:
        try:
            conn = psycopg.connect(dsn, replication="database", autocommit=True)
        except psycopg.OperationalError as error:
            raise SourceUnavailable(f"cannot open a replication connection: {error}") from None
        return cls(conn, spec)

    @property
    def plugin(self) -> OutputPlugin:
        return self._spec.plugin

    @property
    def server_version(self) -> int:
        return self._conn.info.server_version

    def create_slot(self) -> CreatedSlot:
        """Create the slot and export the snapshot it starts from.

        The snapshot stays importable until the next command on this connection.
        """
        options = "SNAPSHOT 'export'" + (", FAILOVER true" if self._spec.failover else "")
        query = sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(self._slot),
            sql.Identifier(self._spec.plugin.name),
            sql.SQL(options),
        )
        row = self._run(query, refused=self._spec.plugin.name).fetchone()
        assert row is not None
        return CreatedSlot(Lsn.parse(str(row[1])), str(row[2]))

    def mark_failover(self) -> None:
        """Make an existing slot a failover slot (it must not be in use)."""
        self._run(
            sql.SQL("ALTER_REPLICATION_SLOT {} (FAILOVER true)").format(sql.Identifier(self._slot))
        )

    def drop_slot(self) -> None:
        self._run(sql.SQL("DROP_REPLICATION_SLOT {} WAIT").format(sql.Identifier(self._slot)))

    def _run(
        self, query: sql.Composed, *, refused: str | None = None
    ) -> psycopg.Cursor[tuple[object, ...]]:
        """Run a replication command; with `refused`, a plugin the server will not load is
        a `ConfigError` naming the plugin `refused` (not a connection problem to retry)."""
        try:
            return self._conn.execute(query)
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFile) as error:
            if refused is None:
                raise
            raise ConfigError(plugin_refused(refused, error)) from None
        except psycopg.errors.ObjectNotInPrerequisiteState as error:
            raise ConfigError(f"the source cannot do logical replication: {error}") from None
        except psycopg.OperationalError as error:
            raise SourceUnavailable(f"replication command failed: {error}") from None

    def start(self, start_lsn: Lsn) -> None:
        options = ", ".join(self._spec.plugin.start_options(self.server_version))
        query = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(self._slot), sql.SQL(str(start_lsn)), sql.SQL(options)
        )
        self._run(query)
        self._streaming = True
        self.confirmed = start_lsn

    def read_frames(self, limit: int = MAX_FRAMES_PER_READ) -> list[memoryview]:
        """Every CopyData frame already received (up to `limit`), without blocking."""
        pgconn = self._conn.pgconn
        frames: list[memoryview] = []
        consumed = False
        while len(frames) < limit:
            size, data = pgconn.get_copy_data(1)
            if size > 0:
                frames.append(data)
            elif size == 0:
                if consumed:
                    break
                # Pull whatever the socket holds into libpq's buffer, once per wake-up.
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError:
                    raise SourceUnavailable(self._lost("reading the stream")) from None
                consumed = True
            else:
                raise SourceUnavailable(self._lost("the server ended the stream"))
        return frames

    def _lost(self, doing: str) -> str:
        message = self._conn.pgconn.error_message.decode(errors="replace").strip()
        return f"replication connection lost while {doing}: {message or 'no detail'}"

    async def wait_readable(self, timeout: float) -> None:
        """Return when the socket has data, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._conn.pgconn.socket

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        # A timer instead of asyncio.wait_for: no task per wake-up on the stream's hot path.
        loop.add_reader(fd, wake)
        timer = loop.call_later(timeout, wake)
        try:
            await ready
        finally:
            timer.cancel()
            loop.remove_reader(fd)

    def confirm(self, lsn: Lsn) -> None:
        """Tell the server everything up to `lsn` is safely applied (never moves backwards)."""
        self.confirmed = Lsn(max(self.confirmed, lsn))
        self.send_status()

    def send_status(self, reply: bool = False) -> None:
        if not self._streaming:
            return
        now = pg_epoch_us(datetime.now(UTC))
        message = encode_standby_status(self.confirmed, self.confirmed, self.confirmed, now, reply)
        pgconn = self._conn.pgconn
        if pgconn.put_copy_data(message) != 1 or pgconn.flush() < 0:
            raise SourceUnavailable(self._lost("sending a status update"))

    def close(self) -> None:
        self._conn.close()
