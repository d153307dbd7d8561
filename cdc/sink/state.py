"""The slot's state row in the sink: the checkpoint, the snapshot flag, the model.

The checkpoint is saved inside the writer's transaction, with the vectors it covers
(invariant 1); a checkpoint inside a large transaction is saved even when nothing else is
written, so a restart resumes there (`cdc.replication.positions`).

With parallel writers (`sink.writers` > 1) each writer saves its own position, an element of
`writer_positions`, in its own transaction; where the sink as a whole stands is the lowest of
them. A write by all writers together (a batch with a truncate or a resync's read) saves every
element and the checkpoint columns. `use_writers` shapes the array for the configured count
before streaming starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from cdc.config import Settings
from cdc.db import Conn
from cdc.errors import CdcError
from cdc.replication.lsn import Lsn, lsn_text
from cdc.replication.positions import Position, WriterPositions
from cdc.sink.schema import SinkNames


@dataclass(frozen=True, slots=True)
class SinkState:
    checkpoint: Lsn | None
    snapshot_done: bool
    model: str | None
    dimensions: int | None
    # A transaction applied in part: its commit LSN and how many of its changes are here.
    partial_commit: Lsn | None = None
    partial_changes: int = 0
    # Parallel writers' own positions, when they were in use.
    writers: WriterPositions | None = None

    @property
    def position(self) -> Position:
        """Where streaming resumes: everything up to here is in the sink."""
        if self.writers is not None:
            return self.writers.lowest
        return Position(self.checkpoint or Lsn(0), self.partial_commit, self.partial_changes)


def _position_json(position: Position) -> list[Any]:
    return [lsn_text(position.lsn), lsn_text(position.partial_commit), position.partial_changes]


def _position_of(item: Sequence[Any]) -> Position:
    partial = Lsn.parse(item[1]) if item[1] else None
    return Position(Lsn.parse(item[0]), partial, int(item[2]))


def writer_positions_of(value: Any) -> WriterPositions | None:
    """The stored `writer_positions` (a JSON array, or NULL)."""
    if not value:
        return None
    return WriterPositions(tuple(_position_of(item) for item in value))


class StateStore:
    """Reads and writes this slot's row of the state table."""

    def __init__(self, conn: Conn, settings: Settings) -> None:
        self._conn = conn
        self._settings = settings
        self._table = SinkNames.of(settings).state
        self._slot = settings.source.slot
        # Whether the saved checkpoint may be inside a transaction (until known, assume so).
        self._partial_saved = True
        # Parallel writers' positions at the start, when a crash left them apart.
        self._stood: WriterPositions | None = None

    async def load(self) -> SinkState:
        query = sql.SQL(
            "SELECT checkpoint_lsn::text, snapshot_done, model, dimensions, "
            "partial_commit_lsn::text, partial_changes, writer_positions FROM {} WHERE slot = %s"
        ).format(self._table)
        async with self._conn.transaction():
            row = await (await self._conn.execute(query, (self._slot,))).fetchone()
        if row is None:
            return SinkState(None, False, None, None)
        checkpoint = Lsn.parse(row[0]) if row[0] else None
        partial = Lsn.parse(row[4]) if row[4] else None
        writers = writer_positions_of(row[6])
        self._partial_saved = partial is not None or writers is not None
        return SinkState(
            checkpoint, bool(row[1]), row[2], row[3], partial, int(row[5] or 0), writers
        )

    def must_save(self, checkpoint: Position | None) -> bool:
        """Whether a checkpoint with nothing else to write must still be saved: one inside a
        transaction, or the one that ends the transaction a saved one is inside."""
        return checkpoint is not None and (checkpoint.is_partial or self._partial_saved)

    async def save_checkpoint(self, position: Position, writer: int | None = None) -> None:
        """Within the caller's transaction: the one that writes what `position` covers, for
        one of the parallel writers (`writer`) or for all of them (None)."""
        if writer is None:
            await self._save_all(position, self._settings.sink.writers)
        else:
            await self._save_one(position, writer)
        self._partial_saved = position.is_partial

    async def _save_all(self, position: Position, writers: int) -> None:
        query = sql.SQL(
            "INSERT INTO {} (slot, checkpoint_lsn, partial_commit_lsn, partial_changes, "
            "model, dimensions, writer_positions) "
            "VALUES (%s, %s::pg_lsn, %s::pg_lsn, %s, %s, %s, %s) "
            "ON CONFLICT (slot) DO UPDATE SET checkpoint_lsn = EXCLUDED.checkpoint_lsn, "
            "partial_commit_lsn = EXCLUDED.partial_commit_lsn, "
            "partial_changes = EXCLUDED.partial_changes, "
            "writer_positions = EXCLUDED.writer_positions, updated_at = now()"
        ).format(self._table)
        embedding = self._settings.embedding
        each = (
            Jsonb([_position_json(p) for p in self._each(position, writers)])
            if writers > 1
            else None
        )
        params = (
            self._slot,
            lsn_text(position.lsn),
            lsn_text(position.partial_commit),
            position.partial_changes,
            embedding.model,
            embedding.dimensions,
            each,
        )
        await self._conn.execute(query, params)

    async def _save_one(self, position: Position, writer: int) -> None:
        """One writer's element. Writers update the one row at the end of their transactions:
        each waits for the row only while another commits, and (READ COMMITTED) sets its
        element on the version that other committed."""
        query = sql.SQL(
            "UPDATE {} SET writer_positions = jsonb_set(writer_positions, %s, %s), "
            "updated_at = now() WHERE slot = %s AND jsonb_array_length(writer_positions) > %s"
        ).format(self._table)
        path = [str(writer)]
        params = (path, Jsonb(_position_json(position)), self._slot, writer)
        cursor = await self._conn.execute(query, params)
        if cursor.rowcount != 1:
            # Reshaped under this session (not by wal2vec's own writes): a new session shapes
            # the positions again (`use_writers`) and resumes from the lowest.
            raise CdcError(
                f"the state of slot {self._slot} has no position for sink writer {writer}",
                retriable=True,
            )

    def _each(self, position: Position, writers: int) -> list[Position]:
        """Each writer's position after a write by all of them: `position`, except for one
        still ahead of it since a crash between commits (it moves on, never back)."""
        stood = self._stood
        if stood is None or len(stood.positions) != writers:
            return [position] * writers
        return [
            position if stood.moves(index, position) else stood.positions[index]
            for index in range(writers)
        ]

    async def use_writers(self, position: Position, stored: WriterPositions | None) -> None:
        """Before streaming: shape the positions for `sink.writers` writers, all at `position`
        (where the sink as a whole stands), unless they already are. Within a fenced write."""
        writers = self._settings.sink.writers
        count = len(stored.positions) if stored is not None else 1
        if count != writers:
            await self._save_all(position, writers)
        elif stored is not None and not stored.even:
            self._stood = stored

    async def mark_snapshot(self, done: bool, checkpoint: Lsn | None) -> None:
        """Record that a snapshot began (done=False, no checkpoint) or completed at `checkpoint`.

        Only a completed snapshot records the configured model: until then the state keeps
        naming the model the sink's vectors were made with.
        """
        model_update = "model = EXCLUDED.model, dimensions = EXCLUDED.dimensions, " if done else ""
        query = sql.SQL(
            "INSERT INTO {} (slot, checkpoint_lsn, snapshot_done, model, dimensions) "
            "VALUES (%s, %s::pg_lsn, %s, %s, %s) ON CONFLICT (slot) DO UPDATE SET "
            "checkpoint_lsn = EXCLUDED.checkpoint_lsn, snapshot_done = EXCLUDED.snapshot_done, "
            "partial_commit_lsn = NULL, partial_changes = 0, writer_positions = NULL, "
            + model_update
            + "updated_at = now()"
        ).format(self._table)
        embedding = self._settings.embedding
        async with self._conn.transaction():
            await self._conn.execute(
                query,
                (self._slot, lsn_text(checkpoint), done, embedding.model, embedding.dimensions),
            )

    async def request_snapshot(self) -> None:
        """Ask for the snapshot to be taken again (a running streamer notices and restarts)."""
        query = sql.SQL(
            "UPDATE {} SET snapshot_done = false, updated_at = now() WHERE slot = %s"
        ).format(self._table)
        async with self._conn.transaction():
            await self._conn.execute(query, (self._slot,))


async def forget_slot(conn: Conn, settings: Settings) -> None:
    """Delete the slot's state and its snapshot records: the next start begins afresh."""
    names = SinkNames.of(settings)
    for table in (names.state, names.snapshots):
        if await table_exists(conn, table):
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE slot = %s").format(table), (settings.source.slot,)
            )


async def table_exists(conn: Conn, table: sql.Identifier) -> bool:
    row = await (await conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),))).fetchone()
    return row is not None and row[0] is not None
