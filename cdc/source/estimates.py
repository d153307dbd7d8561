"""How many rows the source tables hold, as estimates: the one home for row counts.

Two questions, two answers: the snapshot and resync want a table's size before reading it
(`estimate_rows`, exact when the table was never analyzed), the slot monitor polls every
configured table for a gauge and must never scan one (`live_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence

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
