"""Read queries on the sink: stored chunks, sink ids, dead letters, vector counts.

Nothing here writes. The applier asks what is stored before it embeds; verify, resync, status,
the monitor and `cdc dead-letters` read through here.

Every query names the configured source tables (`source_table = ANY(...)`): several streamers,
each with its own slot and tables, may share one sink table and the dead-letter table, and
what one of them counts, lists or compares must be its own rows only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from cdc.config import Settings
from cdc.db import Conn
from cdc.rows import RowState, SourceKey, StoredChunk
from cdc.sink.schema import SinkNames
from cdc.sink.state import table_exists
from cdc.sink.targets import Targets

_COUNT_ROWS = (
    "SELECT source_table, count(DISTINCT source_id) FROM {} "
    "WHERE source_table = ANY(%s) GROUP BY source_table"
)


class SinkReads:
    """The queries on one sink connection."""

    def __init__(self, conn: Conn, names: SinkNames, targets: Targets) -> None:
        self._conn = conn
        self._names = names
        self._targets = targets

    async def stored_chunks(
        self, rows: Sequence[RowState]
    ) -> dict[SourceKey, dict[int, StoredChunk]]:
        """What the sink holds for these rows: chunk number -> hash, model, metadata equality."""
        stored: dict[SourceKey, dict[int, StoredChunk]] = defaultdict(dict)
        async with self._conn.transaction():
            for target, group in self._targets.group(rows, lambda row: row.source_table):
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

    async def held_chunks(
        self, source_table: str, source_ids: Sequence[str]
    ) -> list[tuple[str, int, str, str]]:
        """(source_id, chunk, content_hash, model) of every chunk stored for these rows."""
        query = sql.SQL(
            "SELECT source_id, chunk, content_hash, model FROM {} "
            "WHERE source_table = %s AND source_id = ANY(%b::text[])"
        ).format(self._targets.of_table(source_table))
        cursor = await self._conn.execute(query, (source_table, list(source_ids)))
        return [(str(i), int(n), str(h), str(m)) for i, n, h, m in await cursor.fetchall()]

    async def stored_source_ids(
        self, source_table: str, batch_rows: int
    ) -> AsyncIterator[list[str]]:
        """Every distinct source_id the sink holds for `source_table`, in lists of `batch_rows`.

        A server-side cursor in its own transaction keeps memory bounded; the connection must
        not be used for anything else until the iteration ends.
        """
        query = sql.SQL(
            "SELECT DISTINCT source_id FROM {} WHERE source_table = %s ORDER BY source_id"
        ).format(self._targets.of_table(source_table))
        async with (
            self._conn.transaction(),
            self._conn.cursor(name="wal2vec_sink_ids") as cursor,
        ):
            cursor.itersize = batch_rows
            await cursor.execute(query, (source_table,))
            while rows := await cursor.fetchmany(batch_rows):
                yield [str(row[0]) for row in rows]

    async def source_ids_after(self, source_table: str, after: str | None, limit: int) -> list[str]:
        """The next `limit` distinct sink ids of `source_table` after `after`, in order."""
        query = sql.SQL(
            "SELECT DISTINCT source_id FROM {} WHERE source_table = %s AND source_id > %s "
            "ORDER BY source_id LIMIT %s"
        ).format(self._targets.of_table(source_table))
        cursor = await self._conn.execute(query, (source_table, after or "", limit))
        return [str(row[0]) for row in await cursor.fetchall()]

    @property
    def _own_tables(self) -> list[str]:
        """The source tables this sink writes for: the configured ones."""
        return list(self._targets.mapping)

    async def dead_letter_count(self) -> int:
        """Dead-lettered chunks of the configured tables (not another streamer's)."""
        query = sql.SQL("SELECT count(*) FROM {} WHERE source_table = ANY(%s)").format(
            self._names.dead_letters
        )
        async with self._conn.transaction():
            row = await (await self._conn.execute(query, (self._own_tables,))).fetchone()
        return int(row[0]) if row else 0

    async def dead_lettered(self, source_table: str, source_ids: Sequence[str]) -> set[str]:
        """Which of these rows wait in the dead-letter table."""
        query = sql.SQL(
            "SELECT DISTINCT source_id FROM {} "
            "WHERE source_table = %s AND source_id = ANY(%b::text[])"
        ).format(self._names.dead_letters)
        cursor = await self._conn.execute(query, (source_table, list(source_ids)))
        return {str(row[0]) for row in await cursor.fetchall()}

    async def dead_letter_ids(self, source_table: str) -> list[str]:
        query = sql.SQL(
            "SELECT DISTINCT source_id FROM {} WHERE source_table = %s ORDER BY source_id"
        ).format(self._names.dead_letters)
        async with self._conn.transaction():
            rows = await (await self._conn.execute(query, (source_table,))).fetchall()
        return [str(row[0]) for row in rows]


async def dead_letter_rows(
    conn: Conn, settings: Settings, tables: Sequence[str]
) -> list[DeadLetterRow]:
    """Every dead letter of these source tables, in order."""
    query = sql.SQL(
        "SELECT source_table, source_id, chunk, attempts, error, lsn::text, "
        "first_failed_at, last_failed_at FROM {} WHERE source_table = ANY(%s) "
        "ORDER BY source_table, source_id, chunk"
    ).format(SinkNames.of(settings).dead_letters)
    rows = await (await conn.execute(query, (list(tables),))).fetchall()
    return [DeadLetterRow(*row) for row in rows]


async def dead_letter_counts(conn: Conn, settings: Settings) -> dict[str, int] | None:
    """Dead-lettered rows per source table; None before `cdc setup` created the table."""
    table = SinkNames.of(settings).dead_letters
    if not await table_exists(conn, table):
        return None
    query = sql.SQL(_COUNT_ROWS).format(table)
    rows = await (await conn.execute(query, (configured_tables(settings),))).fetchall()
    return {str(name): int(count) for name, count in rows}


async def vector_counts(conn: Conn, settings: Settings) -> dict[str, int]:
    """Source rows with vectors, per configured source table (0 where no sink table exists)."""
    counts = {t.table: 0 for t in settings.tables}
    for schema, table in settings.sink_tables():
        target = sql.Identifier(schema, table)
        if not await table_exists(conn, target):
            continue
        query = sql.SQL(_COUNT_ROWS).format(target)
        for source_table, count in await (await conn.execute(query, (list(counts),))).fetchall():
            counts[source_table] = int(count)
    return counts


def configured_tables(settings: Settings) -> list[str]:
    return [t.table for t in settings.tables]


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead-lettered chunk as the dead-letter table holds it."""

    source_table: str
    source_id: str
    chunk: int
    attempts: int
    error: str
    lsn: str | None
    first_failed_at: datetime
    last_failed_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_table": self.source_table,
            "source_id": self.source_id,
            "chunk": self.chunk,
            "attempts": self.attempts,
            "error": self.error,
            "lsn": self.lsn,
            "first_failed_at": self.first_failed_at.isoformat(),
            "last_failed_at": self.last_failed_at.isoformat(),
        }


async def chunk_count(conn: Conn, settings: Settings) -> int:
    """Chunks (sink rows) of the configured tables, in every sink table that exists."""
    total = 0
    for schema, table in settings.sink_tables():
        target = sql.Identifier(schema, table)
        if await table_exists(conn, target):
            query = sql.SQL("SELECT count(*) FROM {} WHERE source_table = ANY(%s)").format(target)
            row = await (await conn.execute(query, (configured_tables(settings),))).fetchone()
            total += int(row[0]) if row else 0
    return total
