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

# CopyData frames taken from libpq's buffer per wake-up before yielding to the event loop.
MAX_FRAMES_PER_READ = 4096


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    consistent_point: Lsn
    snapshot_name: str


def protocol_options(server_version: int, publication: str) -> tuple[str, ...]:
    """pgoutput options for this server.

    Transactions in progress are not streamed (`streaming` stays off): wal2vec could apply
    none of such a transaction before its commit, so it would have to hold all of it. Left to
    the server, a large transaction spills to disk under `logical_decoding_work_mem` and is
    sent once committed, when it can be applied in parts as it arrives
    (`cdc.replication.transactions`).
    """
    version = "4" if server_version >= 160000 else "3" if server_version >= 150000 else "2"
    if server_version < 140000:
        version = "1"
    options = [f"proto_version '{version}'", f"publication_names '{_quote(publication)}'"]
    if server_version >= 140000:
        # Logical messages carry the watermarks of per-table resyncs (PostgreSQL 14+).
        options.append("messages 'true'")
    return tuple(options)


def _quote(value: str) -> str:
    return value.replace("'", "''")


class ReplicationStream:
    """A replication connection for one slot; synchronous commands, non-blocking reads."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], slot: str, publication: str):
        self._conn = conn
        self._slot = slot
        self._publication = publication
        self._streaming = False
        self.confirmed = Lsn(0)

    @classmethod
    def connect(cls, dsn: str, slot: str, publication: str) -> ReplicationStream:
        try:
            conn = psycopg.connect(dsn, replication="database", autocommit=True)
        except psycopg.OperationalError as error:
            raise SourceUnavailable(f"cannot open a replication connection: {error}") from None
        return cls(conn, slot, publication)

    @property
    def server_version(self) -> int:
        return self._conn.info.server_version

    def create_slot(self) -> CreatedSlot:
        """Create the slot and export the snapshot it starts from.

        The snapshot stays importable until the next command on this connection.
        """
        query = sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(
            sql.Identifier(self._slot)
        )
        row = self._run(query).fetchone()
        assert row is not None
        return CreatedSlot(Lsn.parse(str(row[1])), str(row[2]))

    def drop_slot(self) -> None:
        self._run(sql.SQL("DROP_REPLICATION_SLOT {} WAIT").format(sql.Identifier(self._slot)))

    def _run(self, query: sql.Composed) -> psycopg.Cursor[tuple[object, ...]]:
        try:
            return self._conn.execute(query)
        except psycopg.errors.ObjectNotInPrerequisiteState as error:
            raise ConfigError(f"the source cannot do logical replication: {error}") from None
        except psycopg.OperationalError as error:
            raise SourceUnavailable(f"replication command failed: {error}") from None

    def start(self, start_lsn: Lsn) -> None:
        options = ", ".join(protocol_options(self.server_version, self._publication))
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
