"""The keys a snapshot read, so the rows it did not see can go afterwards."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from cdc.rows import SourceKey
from cdc.sink.store import Sink

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
        targets = [self._sink.targets.of_table(t) for t in source_tables]
        targets.append(self._sink.names.dead_letters)
        unique = list({target.as_string(): target for target in targets}.values())
        async with self._sink.writer.fenced():  # a write like any other: in the term
            for target in unique:
                query = sql.SQL(
                    "DELETE FROM {} AS s WHERE s.source_table = ANY(%s) AND NOT EXISTS "
                    "(SELECT 1 FROM {} AS k WHERE k.source_table = s.source_table "
                    "AND k.source_id = s.source_id)"
                ).format(target, SEEN_TABLE)
                cursor = await conn.execute(query, (list(source_tables),))
                removed += max(cursor.rowcount, 0)
        return removed
