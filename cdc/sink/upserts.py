"""Writing vectors: upserts (pipelined, or a binary COPY through a staging table for many
rows) and metadata-only updates. Called inside the writer's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from cdc.db import Conn
from cdc.embedding.providers import Vector
from cdc.replication.lsn import lsn_text
from cdc.rows import ChunkWork
from cdc.sink.targets import Targets

_ON_CONFLICT = (
    "ON CONFLICT (source_table, source_id, chunk) DO UPDATE SET "
    "content = EXCLUDED.content, content_hash = EXCLUDED.content_hash, "
    "model = EXCLUDED.model, embedding = EXCLUDED.embedding, "
    "metadata = EXCLUDED.metadata, lsn = EXCLUDED.lsn, updated_at = now()"
)
_STAGE_TYPES = [
    "text", "text", "int4", "text", "text", "text", "vector", "jsonb", "text"
]  # fmt: skip

# Upserts of at least this many chunks go through a binary COPY into a staging table and one
# INSERT ... SELECT; fewer are cheaper as a pipelined executemany.
STAGED_UPSERT_ROWS = 64
STAGE_TABLE = sql.Identifier("wal2vec_stage")


class Upserter:
    """Upserts chunks and their vectors into the sink tables of one connection."""

    def __init__(self, conn: Conn, targets: Targets, model: str) -> None:
        self._conn = conn
        self._targets = targets
        self._model = model
        self._stage_ready = False

    async def upsert(self, upserts: Sequence[tuple[ChunkWork, Vector]]) -> None:
        for target, group in self._targets.group(upserts, lambda u: u[0].row.source_table):
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
                    lsn_text(work.row.lsn),
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

    async def update_metadata(self, works: Sequence[ChunkWork]) -> None:
        for target, group in self._targets.group(works, lambda w: w.row.source_table):
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
