"""HNSW indexes built after a bulk load instead of maintained row by row during it.

Inserting into a live HNSW index is by far the slowest part of loading vectors (each insert
searches the graph); building the index once over the loaded table is many times faster and
can use parallel workers. A snapshot therefore loads a sink table that starts empty (or whose
index an interrupted load already removed) with no index, and builds it when the load is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, sql

from cdc.schema import index_ddl, index_name

log = logging.getLogger(__name__)
Conn = AsyncConnection[tuple[Any, ...]]
Target = tuple[str, str]


async def has_index(conn: Conn, schema: str, table: str) -> bool:
    name = sql.Identifier(schema, index_name(table)).as_string(conn)
    row = await (await conn.execute("SELECT to_regclass(%s)", (name,))).fetchone()
    return row is not None and row[0] is not None


async def is_empty(conn: Conn, schema: str, table: str) -> bool:
    query = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(schema, table))
    row = await (await conn.execute(query)).fetchone()
    return bool(row and row[0])


async def defer_indexes(conn: Conn, targets: Sequence[Target]) -> list[Target]:
    """Drop the index of every target that is empty or already lost its index to an
    interrupted load; return those targets, which `build_indexes` must index afterwards."""
    deferred = []
    for schema, table in targets:
        if await is_empty(conn, schema, table) or not await has_index(conn, schema, table):
            await conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(schema, index_name(table)))
            )
            deferred.append((schema, table))
    if deferred:
        log.info(
            "loading %s without their HNSW index; it is built once the load is done",
            ", ".join(f"{s}.{t}" for s, t in deferred),
        )
    return deferred


async def build_indexes(
    conn: Conn, targets: Sequence[Target], vector_type: str, memory: str
) -> None:
    """Build the HNSW index of each target, with as much memory and as many parallel
    workers as the server allows for one maintenance command."""
    for schema, table in targets:
        started = time.monotonic()
        async with conn.transaction():
            # SET LOCAL: the settings end with the build, not with the session.
            await conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (memory,))
            await conn.execute(
                "SELECT set_config('max_parallel_maintenance_workers', "
                "current_setting('max_parallel_workers'), true)"
            )
            await conn.execute(index_ddl(schema, table, vector_type))
        log.info(
            "built the HNSW index of %s.%s in %.1fs", schema, table, time.monotonic() - started
        )
