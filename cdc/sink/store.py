"""The sink: vectors, dead letters and the checkpoint, written in one transaction.

Writes are idempotent (upserts keyed by source table, id and chunk; deletes by key), so a batch
replayed after a crash leaves the same rows. The checkpoint LSN commits with the vectors it
covers; the stream confirms it to the server only after that commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pgvector.psycopg import register_vector_async
from psycopg import sql
from psycopg.types.json import Jsonb

from cdc.apply.plan import ChunkWork, StoredChunk
from cdc.config import Settings
from cdc.db import Conn
from cdc.embedding.providers import Vector
from cdc.replication.lsn import Lsn
from cdc.replication.positions import Position
from cdc.rows import RowState, SourceKey
from cdc.sink.progress import ProgressStore, ResyncPosition
from cdc.sink.schema import SinkNames

T = TypeVar("T")


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


_ON_CONFLICT = (
    "ON CONFLICT (source_table, source_id, chunk) DO UPDATE SET "
    "content = EXCLUDED.content, content_hash = EXCLUDED.content_hash, "
    "model = EXCLUDED.model, embedding = EXCLUDED.embedding, "
    "metadata = EXCLUDED.metadata, lsn = EXCLUDED.lsn, updated_at = now()"
)
_STAGE_TYPES = [
    "text", "text", "int4", "text", "text", "text", "vector", "jsonb", "text"
]  # fmt: skip


def _lsn_text(lsn: int | None) -> str | None:
    return None if lsn is None else str(Lsn(lsn))


# Upserts of at least this many chunks go through a binary COPY into a staging table and one
# INSERT ... SELECT; fewer are cheaper as a pipelined executemany.
STAGED_UPSERT_ROWS = 64
STAGE_TABLE = sql.Identifier("wal2vec_stage")


class Sink:
    def __init__(
        self, conn: Conn, settings: Settings, targets: dict[str, tuple[str, str]] | None = None
    ) -> None:
        self._conn = conn
        self._settings = settings
        self._names = SinkNames.of(settings)
        self._model = settings.embedding.model
        self._slot = settings.source.slot
        # source table -> (schema, table) of its sink table (a rebuild writes elsewhere)
        self._targets = targets or {t.table: settings.target_of(t) for t in settings.tables}
        self._dead_letters_present = True
        # Serializes writers of this slot's sink that did not come through its stream: see
        # `writer_lock`.
        self._lock_name = f"wal2vec writer {settings.sink.schema_} {self._slot}"
        self._stage_ready = False
        # Whether the saved checkpoint may be inside a transaction (until known, assume so).
        self._partial_saved = True
        self.progress = ProgressStore(conn, self._names, self._slot)

    @classmethod
    async def connect(
        cls, conn: Conn, settings: Settings, targets: dict[str, tuple[str, str]] | None = None
    ) -> Sink:
        await register_vector_async(conn)
        sink = cls(conn, settings, targets)
        sink._dead_letters_present = await sink.dead_letter_count() > 0
        return sink

    @property
    def connection(self) -> Conn:
        return self._conn

    def target(self, source_table: str) -> sql.Identifier:
        return sql.Identifier(*self._targets[source_table])

    async def sibling(self, conn: Conn) -> Sink:
        """A sink like this one (same tables) on another connection."""
        return await Sink.connect(conn, self._settings, dict(self._targets))

    def target_names(self, source_tables: Sequence[str]) -> list[tuple[str, str]]:
        """The (schema, table) each of `source_tables` writes to, each once."""
        return list(dict.fromkeys(self._targets[t] for t in source_tables))

    @property
    def dead_letter_table(self) -> sql.Identifier:
        return self._names.dead_letters

    async def load_state(self) -> SinkState:
        query = sql.SQL(
            "SELECT checkpoint_lsn::text, snapshot_done, model, dimensions, "
            "partial_commit_lsn::text, partial_changes FROM {} WHERE slot = %s"
        ).format(self._names.state)
        async with self._conn.transaction():
            row = await (await self._conn.execute(query, (self._slot,))).fetchone()
        if row is None:
            return SinkState(None, False, None, None)
        checkpoint = Lsn.parse(row[0]) if row[0] else None
        partial = Lsn.parse(row[4]) if row[4] else None
        self._partial_saved = partial is not None
        return SinkState(checkpoint, bool(row[1]), row[2], row[3], partial, int(row[5] or 0))

    async def dead_letter_count(self) -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(self._names.dead_letters)
        async with self._conn.transaction():
            row = await (await self._conn.execute(query)).fetchone()
        return int(row[0]) if row else 0

    async def stored_chunks(
        self, rows: Sequence[RowState]
    ) -> dict[SourceKey, dict[int, StoredChunk]]:
        """What the sink holds for these rows: chunk number -> hash, model, metadata equality."""
        stored: dict[SourceKey, dict[int, StoredChunk]] = defaultdict(dict)
        async with self._conn.transaction():
            for target, group in _by_target(self._targets, rows, lambda row: row.source_table):
                await self._read_chunks(target, group, stored)
        return stored

    async def _read_chunks(
        self,
        target: sql.Identifier,
        rows: Sequence[RowState],
        into: dict[SourceKey, dict[int, StoredChunk]],
    ) -> None:
        # The server compares metadata (jsonb equality): cheaper than parsing every stored
        # document here when most rows of a batch are unchanged.
        query = sql.SQL(
            "SELECT s.source_table, s.source_id, s.chunk, s.content_hash, s.model, "
            "s.metadata = k.m FROM {} AS s "
            "JOIN unnest(%b::text[], %b::text[], %b::jsonb[]) AS k(t, i, m) "
            "ON s.source_table = k.t AND s.source_id = k.i"
        ).format(target)
        params = (
            [row.source_table for row in rows],
            [row.source_id for row in rows],
            [Jsonb(row.metadata) for row in rows],
        )
        cursor = await self._conn.execute(query, params)
        for table, source_id, chunk, digest, model, same in await cursor.fetchall():
            into[(table, source_id)][chunk] = StoredChunk(digest, model, bool(same))

    async def write(self, batch: SinkWrite) -> None:
        """Apply `batch` and move the checkpoint, atomically.

        A batch that changes nothing is not written at all: the confirmed position the server
        keeps already covers it, and the checkpoint only guards changes that were written.
        Inside a large transaction the server confirms nothing, so there the checkpoint is
        written anyway: a restart then resumes where it stands, not at the transaction's start.
        """
        if batch.is_empty() and not self._must_save(batch.checkpoint):
            return
        async with self._conn.transaction():
            await self._conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self._lock_name,)
            )
            await self._truncate(batch.truncated)
            await self._remove(batch.remove)
            await self._trim(batch.trim)
            await self._upsert(batch.upserts)
            await self._update_metadata(batch.metadata_only)
            await self._resolve_dead_letters(batch)
            await self._record_dead_letters(batch.dead_letters)
            await self.progress.save_positions(batch.positions)
            if batch.checkpoint is not None:
                await self._save_checkpoint(batch.checkpoint)

    @asynccontextmanager
    async def writer_lock(self) -> AsyncIterator[None]:
        """Hold this slot's sink writer lock, which every `write` takes for its transaction.

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

    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead-lettered rows per source table."""
        query = sql.SQL(
            "SELECT source_table, count(DISTINCT source_id) FROM {} GROUP BY source_table"
        ).format(self._names.dead_letters)
        async with self._conn.transaction():
            rows = await (await self._conn.execute(query)).fetchall()
        return {str(table): int(count) for table, count in rows}

    async def _truncate(self, tables: Sequence[str]) -> None:
        for table in tables:
            query = sql.SQL("DELETE FROM {} WHERE source_table = %s")
            await self._conn.execute(query.format(self.target(table)), (table,))
            await self._conn.execute(query.format(self._names.dead_letters), (table,))

    async def _remove(self, rows: Sequence[RowState]) -> None:
        for target, group in _by_target(self._targets, rows, lambda r: r.source_table):
            query = sql.SQL(
                "DELETE FROM {} AS s USING unnest(%b::text[], %b::text[]) AS k(t, i) "
                "WHERE s.source_table = k.t AND s.source_id = k.i"
            ).format(target)
            await self._conn.execute(
                query, ([r.source_table for r in group], [r.source_id for r in group])
            )

    async def _trim(self, trims: Sequence[tuple[RowState, int]]) -> None:
        for target, group in _by_target(self._targets, trims, lambda t: t[0].source_table):
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

    async def _upsert(self, upserts: Sequence[tuple[ChunkWork, Vector]]) -> None:
        for target, group in _by_target(self._targets, upserts, lambda u: u[0].row.source_table):
            rows = [
                (
                    work.row.source_table,
                    work.row.source_id,
                    work.chunk.number,
                    work.chunk.text,
                    work.chunk.hash,
                    self._model,
                    vector,
                    Jsonb(work.row.metadata),
                    _lsn_text(work.row.lsn),
                )
                for work, vector in group
            ]
            if len(rows) >= STAGED_UPSERT_ROWS:
                await self._staged_upsert(target, rows)
                continue
            query = sql.SQL(
                "INSERT INTO {} (source_table, source_id, chunk, content, content_hash, model, "
                "embedding, metadata, lsn, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::pg_lsn, now()) " + _ON_CONFLICT
            ).format(target)
            async with self._conn.cursor() as cursor:
                await cursor.executemany(query, rows)

    async def _staged_upsert(self, target: sql.Identifier, rows: list[tuple[Any, ...]]) -> None:
        """Binary COPY into a temporary table, then one INSERT ... SELECT: a bulk load's rows
        cross the wire once, in binary, with no per-row statement."""
        conn = self._conn
        if not self._stage_ready:
            await conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} (source_table text, source_id text, "
                    "chunk int, content text, content_hash text, model text, embedding vector, "
                    "metadata jsonb, lsn text) ON COMMIT DELETE ROWS"
                ).format(STAGE_TABLE)
            )
            self._stage_ready = True
        copy_sql = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(STAGE_TABLE)
        async with conn.cursor() as cursor:
            async with cursor.copy(copy_sql) as copy:
                copy.set_types(_STAGE_TYPES)
                for row in rows:
                    await copy.write_row(row)
            await cursor.execute(
                sql.SQL(
                    "INSERT INTO {} (source_table, source_id, chunk, content, content_hash, "
                    "model, embedding, metadata, lsn, updated_at) "
                    "SELECT source_table, source_id, chunk, content, content_hash, model, "
                    "embedding, metadata, lsn::pg_lsn, now() FROM {} " + _ON_CONFLICT
                ).format(target, STAGE_TABLE)
            )
            await cursor.execute(sql.SQL("TRUNCATE {}").format(STAGE_TABLE))

    async def _update_metadata(self, works: Sequence[ChunkWork]) -> None:
        for target, group in _by_target(self._targets, works, lambda w: w.row.source_table):
            query = sql.SQL(
                "UPDATE {} AS s SET metadata = k.m, updated_at = now() "
                "FROM unnest(%b::text[], %b::text[], %b::int[], %b::jsonb[]) AS k(t, i, n, m) "
                "WHERE s.source_table = k.t AND s.source_id = k.i AND s.chunk = k.n"
            ).format(target)
            await self._conn.execute(
                query,
                (
                    [w.row.source_table for w in group],
                    [w.row.source_id for w in group],
                    [w.chunk.number for w in group],
                    [Jsonb(w.row.metadata) for w in group],
                ),
            )

    async def _resolve_dead_letters(self, batch: SinkWrite) -> None:
        if not self._dead_letters_present:
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
        self._dead_letters_present = True
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
                _lsn_text(letter.work.row.lsn),
            )
            for letter in letters
        ]
        async with self._conn.cursor() as cursor:
            await cursor.executemany(query, params)

    def _must_save(self, checkpoint: Position | None) -> bool:
        """Whether a checkpoint with nothing else to write must still be saved: one inside a
        transaction, or the one that ends the transaction a saved one is inside."""
        return checkpoint is not None and (checkpoint.is_partial or self._partial_saved)

    async def _save_checkpoint(self, position: Position) -> None:
        query = sql.SQL(
            "INSERT INTO {} (slot, checkpoint_lsn, partial_commit_lsn, partial_changes, "
            "model, dimensions) VALUES (%s, %s::pg_lsn, %s::pg_lsn, %s, %s, %s) "
            "ON CONFLICT (slot) DO UPDATE SET checkpoint_lsn = EXCLUDED.checkpoint_lsn, "
            "partial_commit_lsn = EXCLUDED.partial_commit_lsn, "
            "partial_changes = EXCLUDED.partial_changes, updated_at = now()"
        ).format(self._names.state)
        embedding = self._settings.embedding
        params = (
            self._slot,
            _lsn_text(position.lsn),
            _lsn_text(position.partial_commit),
            position.partial_changes,
            embedding.model,
            embedding.dimensions,
        )
        await self._conn.execute(query, params)
        self._partial_saved = position.is_partial

    async def mark_snapshot(self, done: bool, checkpoint: int | None) -> None:
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
        ).format(self._names.state)
        embedding = self._settings.embedding
        async with self._conn.transaction():
            await self._conn.execute(
                query,
                (self._slot, _lsn_text(checkpoint), done, embedding.model, embedding.dimensions),
            )

    async def request_snapshot(self) -> None:
        """Ask for the snapshot to be taken again (a running streamer notices and restarts)."""
        query = sql.SQL(
            "UPDATE {} SET snapshot_done = false, updated_at = now() WHERE slot = %s"
        ).format(self._names.state)
        async with self._conn.transaction():
            await self._conn.execute(query, (self._slot,))

    async def held_chunks(
        self, source_table: str, source_ids: Sequence[str]
    ) -> list[tuple[str, int, str, str]]:
        """(source_id, chunk, content_hash, model) of every chunk stored for these rows."""
        query = sql.SQL(
            "SELECT source_id, chunk, content_hash, model FROM {} "
            "WHERE source_table = %s AND source_id = ANY(%b::text[])"
        ).format(self.target(source_table))
        cursor = await self._conn.execute(query, (source_table, list(source_ids)))
        return [(str(i), int(n), str(h), str(m)) for i, n, h, m in await cursor.fetchall()]

    async def dead_lettered(self, source_table: str, source_ids: Sequence[str]) -> set[str]:
        """Which of these rows wait in the dead-letter table."""
        query = sql.SQL(
            "SELECT DISTINCT source_id FROM {} "
            "WHERE source_table = %s AND source_id = ANY(%b::text[])"
        ).format(self._names.dead_letters)
        cursor = await self._conn.execute(query, (source_table, list(source_ids)))
        return {str(row[0]) for row in await cursor.fetchall()}

    async def stored_source_ids(
        self, source_table: str, batch_rows: int
    ) -> AsyncIterator[list[str]]:
        """Every distinct source_id the sink holds for `source_table`, in lists of `batch_rows`.

        A server-side cursor in its own transaction keeps memory bounded; the connection must
        not be used for anything else until the iteration ends.
        """
        query = sql.SQL(
            "SELECT DISTINCT source_id FROM {} WHERE source_table = %s ORDER BY source_id"
        ).format(self.target(source_table))
        async with (
            self._conn.transaction(),
            self._conn.cursor(name="wal2vec_sink_ids") as cursor,
        ):
            cursor.itersize = batch_rows
            await cursor.execute(query, (source_table,))
            while rows := await cursor.fetchmany(batch_rows):
                yield [str(row[0]) for row in rows]


SEEN_TABLE = sql.Identifier("wal2vec_snapshot_seen")


class SeenKeys:
    """The keys a snapshot read, kept in a temporary table of the sink session so memory stays
    bounded; sink rows of those tables whose key was not seen are orphans."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def start(self) -> None:
        conn = self._sink.connection
        await conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} (source_table text, source_id text)"
            ).format(SEEN_TABLE)
        )
        await conn.execute(sql.SQL("TRUNCATE {}").format(SEEN_TABLE))

    async def add(self, keys: Sequence[SourceKey]) -> None:
        conn = self._sink.connection
        async with (
            conn.cursor() as cursor,
            cursor.copy(
                sql.SQL("COPY {} (source_table, source_id) FROM STDIN").format(SEEN_TABLE)
            ) as copy,
        ):
            for key in keys:
                await copy.write_row(key)

    async def remove_unseen(self, source_tables: Sequence[str]) -> int:
        """Delete sink rows (and dead letters) of `source_tables` the snapshot did not see."""
        removed = 0
        conn = self._sink.connection
        targets = [self._sink.target(t) for t in source_tables] + [self._sink.dead_letter_table]
        unique = list({target.as_string(): target for target in targets}.values())
        async with conn.transaction():
            for target in unique:
                query = sql.SQL(
                    "DELETE FROM {} AS s WHERE s.source_table = ANY(%s) AND NOT EXISTS "
                    "(SELECT 1 FROM {} AS k WHERE k.source_table = s.source_table "
                    "AND k.source_id = s.source_id)"
                ).format(target, SEEN_TABLE)
                cursor = await conn.execute(query, (list(source_tables),))
                removed += max(cursor.rowcount, 0)
        return removed


def _by_target(
    targets: dict[str, tuple[str, str]], items: Sequence[T], table_of: Callable[[T], str]
) -> list[tuple[sql.Identifier, list[T]]]:
    """Group items by the sink table their source table writes to."""
    groups: dict[tuple[str, str], list[T]] = defaultdict(list)
    for item in items:
        groups[targets[table_of(item)]].append(item)
    return [(sql.Identifier(*target), group) for target, group in groups.items()]
