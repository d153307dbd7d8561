"""How many rows the source tables hold, as estimates: the one home for row counts.

Three questions, three answers: the snapshot and resync want a table's size before reading it
(`estimate_rows`, exact when the table was never analyzed), the slot monitor polls every
configured table for a gauge and must never scan one (`live_rows`), and `cdc estimate` decides
whether to read a table whole or a sample of it without reading it (`table_size`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from cdc.config import TableConfig
from cdc.db import Conn
from cdc.source.reads import SourceTable


async def estimate_rows(conn: Conn, table: SourceTable) -> int:
    """The planner's row estimate for `table`; an exact count when it was never analyzed."""
    name = table.identifier.as_string(conn)
    row = await (
        await conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (name,)
        )
    ).fetchone()
    if row is not None and row[0] is not None and int(row[0]) >= 0:
        return int(row[0])
    counted = await (
        await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.identifier))
    ).fetchone()
    return int(counted[0]) if counted and counted[0] is not None else 0


# Live tuples as the statistics collector counts them (current without ANALYZE), else the
# planner's estimate (-1 until the table was first analyzed).
_ROWS_QUERY = """
SELECT n.nspname || '.' || c.relname,
       GREATEST(COALESCE(st.n_live_tup, 0), c.reltuples::bigint, 0)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_all_tables st ON st.relid = c.oid
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""


async def live_rows(conn: Conn, tables: Sequence[TableConfig]) -> dict[str, int]:
    """Rows each table holds, as the server estimates them, by configured name."""
    schemas = [t.schema_name for t in tables]
    names = [t.table_name for t in tables]
    rows = await (await conn.execute(_ROWS_QUERY, (schemas, names))).fetchall()
    return {str(name): int(count) for name, count in rows}


@dataclass(frozen=True, slots=True)
class TableSize:
    """A table's size as the server knows it without reading it."""

    rows: int  # the planner's estimate
    pages: int  # heap pages on disk now, over every partition


# Heap pages of the table and of every partition it has (pg_partition_tree lists nothing for
# a table that is not partitioned; a partitioned table's own size is 0).
_PAGES_QUERY = """
SELECT coalesce(sum(pg_relation_size(t.relid)), 0) / current_setting('block_size')::bigint
FROM (SELECT relid FROM pg_partition_tree(%(t)s::regclass) WHERE isleaf
      UNION SELECT %(t)s::regclass) AS t
"""


async def table_size(conn: Conn, table: SourceTable) -> TableSize:
    """The planner's row estimate for `table` (pg_class.reltuples scaled to the table's size
    on disk now, partitions summed; a guess from its size when it was never analyzed) and its
    pages. Reads no row."""
    explain = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}").format(table.identifier)
    plan = await (await conn.execute(explain)).fetchone()
    rows = int(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0
    name = table.identifier.as_string(conn)
    pages = await (await conn.execute(_PAGES_QUERY, {"t": name})).fetchone()
    return TableSize(rows=rows, pages=int(pages[0]) if pages else 0)
