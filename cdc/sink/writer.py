"""The sink writer: vectors, dead letters, resync positions and the checkpoint, in one transaction.

Writes are idempotent (upserts keyed by source table, id and chunk; deletes by key), so a batch
replayed after a crash leaves the same rows. The checkpoint LSN commits with the vectors it
covers; the stream confirms it to the server only after that commit (invariant 1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from psycopg import sql

from cdc.db import Conn
from cdc.embedding.providers import Vector
from cdc.replication.lsn import lsn_text
from cdc.replication.positions import Position
from cdc.rows import ChunkWork, RowState, SourceKey
from cdc.sink.fence import Fence
from cdc.sink.progress import ProgressStore, ResyncPosition
from cdc.sink.schema import SinkNames
from cdc.sink.state import StateStore
from cdc.sink.targets import Targets
from cdc.sink.upserts import Upserter


@dataclass(frozen=True, slots=True)
class DeadLetter:
    work: ChunkWork
    error: str


@dataclass(slots=True)
class SinkWrite:
    """Everything one flush writes; applied in this order inside one transaction."""

    truncated: list[str] = field(default_factory=list)
    remove: list[RowState] = field(default_factory=list)
    trim: list[tuple[RowState, int]] = field(default_factory=list)
    upserts: list[tuple[ChunkWork, Vector]] = field(default_factory=list)
    metadata_only: list[ChunkWork] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Rows that landed: any dead letter they had is resolved.
    landed: list[SourceKey] = field(default_factory=list)
    # Per-table resync positions this write covers: saved with it.
    positions: list[ResyncPosition] = field(default_factory=list)
    checkpoint: Position | None = None
    # Which of the parallel writers (`sink.writers`) this is, whose position the checkpoint
    # is; None: all of them (or the only one).
    writer: int | None = None

    def is_empty(self) -> bool:
        return not (
            self.truncated
            or self.remove
            or self.trim
            or self.upserts
            or self.metadata_only
            or self.dead_letters
            or self.positions
        )


class SinkWriter:
    """Applies `SinkWrite`s on one sink connection."""

    def __init__(  # noqa: PLR0917
        self,
        conn: Conn,
        names: SinkNames,
        targets: Targets,
        state: StateStore,
        progress: ProgressStore,
        model: str,
        lock_name: str,
        fence: Fence | None = None,
    ) -> None:
        self._conn = conn
        self._names = names
        self._targets = targets
        self._state = state
        self._progress = progress
        self._upserter = Upserter(conn, targets, model)
        # Serializes writers of this slot's sink that did not come through its stream: see
        # `writer_lock`.
        self._lock_name = lock_name
        # A leader's term: checked in every write (`cdc.sink.fence`); None for the commands
        # that write without leading (`dead-letters retry`, `verify --repair`).
        self._fence = fence
        self.dead_letters_present = True

    async def write(self, batch: SinkWrite) -> None:
        """Apply `batch` and move the checkpoint, atomically.

        A batch that changes nothing is not written at all: the confirmed position the server
        keeps already covers it, and the checkpoint only guards changes that were written.
        Inside a large transaction the server confirms nothing, so there the checkpoint is
        written anyway: a restart then resumes where it stands, not at the transaction's start.
        """
        if batch.is_empty() and not self._state.must_save(batch.checkpoint):
            return
        async with self.fenced():
            await self._truncate(batch.truncated)
            await self._remove(batch.remove)
            await self._trim(batch.trim)
            await self._upserter.upsert(batch.upserts)
            await self._upserter.update_metadata(batch.metadata_only)
            await self._resolve_dead_letters(batch)
            await self._record_dead_letters(batch.dead_letters)
            await self._progress.save_positions(batch.positions)
            if batch.checkpoint is not None:
                await self._state.save_checkpoint(batch.checkpoint, batch.writer)

    @asynccontextmanager
    async def fenced(self) -> AsyncIterator[None]:
        """A transaction holding this slot's writer lock, in the leader's term if it has one.

        The lock is shared: the stream's parallel writers and the snapshot's write at once,
        and what must not run beside them takes it exclusively (a claim of a new term, a
        `writer_lock` holder). The lock first, the term's check after it, in two statements:
        under READ COMMITTED each statement reads what was committed when it began, and only
        once the lock is held has every claim that could end the term committed.
        """
        async with self._conn.transaction():
            await self._conn.execute(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0))", (self._lock_name,)
            )
            if self._fence is not None:
                await self._fence.check(self._conn)
            yield

    @asynccontextmanager
    async def writer_lock(self) -> AsyncIterator[None]:
        """Hold this slot's sink writer lock exclusively (every `write` takes it shared for
        its transaction), until the block ends.

        A writer that reads the source outside the stream (`cdc dead-letters retry`) holds it
        from its read to its commit, so no change committed after its read can reach the sink
        before its older read does.
        """
        lock = "SELECT pg_advisory_lock(hashtextextended(%s, 0))"
        await self._conn.execute(lock, (self._lock_name,))
        try:
            yield
        finally:
            unlock = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"
            await self._conn.execute(unlock, (self._lock_name,))

    async def _truncate(self, tables: Sequence[str]) -> None:
        for table in tables:
            query = sql.SQL("DELETE FROM {} WHERE source_table = %s")
            await self._conn.execute(query.format(self._targets.of_table(table)), (table,))
            await self._conn.execute(query.format(self._names.dead_letters), (table,))

    async def _remove(self, rows: Sequence[RowState]) -> None:
        for target, group in self._targets.group(rows, lambda r: r.source_table):
            query = sql.SQL(
                "DELETE FROM {} AS s USING unnest(%b::text[], %b::text[]) AS k(t, i) "
                "WHERE s.source_table = k.t AND s.source_id = k.i"
            ).format(target)
            await self._conn.execute(
                query, ([r.source_table for r in group], [r.source_id for r in group])
            )

    async def _trim(self, trims: Sequence[tuple[RowState, int]]) -> None:
        for target, group in self._targets.group(trims, lambda t: t[0].source_table):
            query = sql.SQL(
                "DELETE FROM {} AS s USING unnest(%b::text[], %b::text[], %b::int[]) AS k(t, i, n) "
                "WHERE s.source_table = k.t AND s.source_id = k.i AND s.chunk >= k.n"
            ).format(target)
            await self._conn.execute(
                query,
                (
                    [row.source_table for row, _ in group],
                    [row.source_id for row, _ in group],
                    [keep for _, keep in group],
                ),
            )

    async def _resolve_dead_letters(self, batch: SinkWrite) -> None:
        if not self.dead_letters_present:
            return
        # A row rejected again keeps its dead letter (its attempts count goes up), though its
        # vectors are removed.
        failing = {letter.work.row.key for letter in batch.dead_letters}
        keys = batch.landed + [row.key for row in batch.remove if row.key not in failing]
        if not keys:
            return
        query = sql.SQL(
            "DELETE FROM {} AS d USING unnest(%b::text[], %b::text[]) AS k(t, i) "
            "WHERE d.source_table = k.t AND d.source_id = k.i"
        ).format(self._names.dead_letters)
        await self._conn.execute(query, ([k[0] for k in keys], [k[1] for k in keys]))

    async def _record_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        self.dead_letters_present = True
        query = sql.SQL(
            "INSERT INTO {} AS d (source_table, source_id, chunk, error, content, lsn) "
            "VALUES (%s, %s, %s, %s, %s, %s::pg_lsn) "
            "ON CONFLICT (source_table, source_id, chunk) DO UPDATE SET error = EXCLUDED.error, "
            "content = EXCLUDED.content, lsn = EXCLUDED.lsn, attempts = d.attempts + 1, "
            "last_failed_at = now()"
        ).format(self._names.dead_letters)
        params = [
            (
                letter.work.row.source_table,
                letter.work.row.source_id,
                letter.work.chunk.number,
                letter.error,
                letter.work.chunk.text,
                lsn_text(letter.work.row.lsn),
            )
            for letter in letters
        ]
        async with self._conn.cursor() as cursor:
            await cursor.executemany(query, params)
