"""The slot's state row in the sink: the checkpoint, the snapshot flag, the model.

The checkpoint is saved inside the writer's transaction, with the vectors it covers
(invariant 1); a checkpoint inside a large transaction is saved even when nothing else is
written, so a restart resumes there (`cdc.replication.positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from cdc.config import Settings
from cdc.db import Conn
from cdc.replication.lsn import Lsn, lsn_text
from cdc.replication.positions import Position
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

    @property
    def position(self) -> Position:
        """Where streaming resumes: everything up to here is in the sink."""
        return Position(self.checkpoint or Lsn(0), self.partial_commit, self.partial_changes)


class StateStore:
    """Reads and writes this slot's row of the state table."""

    def __init__(self, conn: Conn, settings: Settings) -> None:
        self._conn = conn
        self._settings = settings
        self._table = SinkNames.of(settings).state
        self._slot = settings.source.slot
        # Whether the saved checkpoint may be inside a transaction (until known, assume so).
        self._partial_saved = True

    async def load(self) -> SinkState:
        query = sql.SQL(
            "SELECT checkpoint_lsn::text, snapshot_done, model, dimensions, "
            "partial_commit_lsn::text, partial_changes FROM {} WHERE slot = %s"
        ).format(self._table)
        async with self._conn.transaction():
            row = await (await self._conn.execute(query, (self._slot,))).fetchone()
        if row is None:
            return SinkState(None, False, None, None)
        checkpoint = Lsn.parse(row[0]) if row[0] else None
        partial = Lsn.parse(row[4]) if row[4] else None
        self._partial_saved = partial is not None
        return SinkState(checkpoint, bool(row[1]), row[2], row[3], partial, int(row[5] or 0))

    def must_save(self, checkpoint: Position | None) -> bool:
        """Whether a checkpoint with nothing else to write must still be saved: one inside a
        transaction, or the one that ends the transaction a saved one is inside."""
        return checkpoint is not None and (checkpoint.is_partial or self._partial_saved)

    async def save_checkpoint(self, position: Position) -> None:
        """Within the caller's transaction: the one that writes what `position` covers."""
        query = sql.SQL(
            "INSERT INTO {} (slot, checkpoint_lsn, partial_commit_lsn, partial_changes, "
            "model, dimensions) VALUES (%s, %s::pg_lsn, %s::pg_lsn, %s, %s, %s) "
            "ON CONFLICT (slot) DO UPDATE SET checkpoint_lsn = EXCLUDED.checkpoint_lsn, "
            "partial_commit_lsn = EXCLUDED.partial_commit_lsn, "
            "partial_changes = EXCLUDED.partial_changes, updated_at = now()"
        ).format(self._table)
        embedding = self._settings.embedding
        params = (
            self._slot,
            lsn_text(position.lsn),
            lsn_text(position.partial_commit),
            position.partial_changes,
            embedding.model,
            embedding.dimensions,
        )
        await self._conn.execute(query, params)
        self._partial_saved = position.is_partial

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
            "partial_commit_lsn = NULL, partial_changes = 0, " + model_update + "updated_at = now()"
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
