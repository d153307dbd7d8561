"""HNSW indexes built after a bulk load instead of maintained row by row during it.

Inserting into a live HNSW index is by far the slowest part of loading vectors (each insert
searches the graph); building the index once over the loaded table is many times faster and
can use parallel workers. A snapshot therefore loads a sink table that starts empty (or whose
index an interrupted load already removed) with no index, and builds it when the load is done.

Several streamers may share a sink table, each loading its own snapshot into it: a build (or
`cdc.sink.provision.ensure_indexes`) holds an advisory lock named after the table, so two
sessions never build the same index at once (the second would fail on the index's name when
the first commits).

The build is fast only while pgvector's graph fits in `maintenance_work_mem`; past that it goes
on inserting into the on-disk graph, at the speed of a live index. The build says beforehand
when `snapshot.index_build_memory` looks too small for the table, and passes pgvector's own
notice on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from psycopg import sql
from psycopg.errors import Diagnostic

from cdc.db import Conn
from cdc.sink.schema import index_ddl, index_name

log = logging.getLogger(__name__)
Target = tuple[str, str]
# Bytes a vector takes in the build's graph besides its value: the element and its neighbour
# lists at pgvector's default m = 16. Measured with pgvector 0.8.6: a graph of 256-dimension
# vectors outgrew 16MB after 9,634 elements (1,741 bytes each, 1,032 of them the vector), one
# of 1536 dimensions after 2,441 (6,873 bytes each, 6,152 the vector).
GRAPH_BYTES_PER_ELEMENT = 720
# Bytes per dimension of each vector type, and its header.
VALUE_BYTES = {"vector": 4, "halfvec": 2}
VALUE_HEADER = 8


def index_lock(schema: str, table: str) -> str:
    """The advisory lock's name: one per sink table, whichever streamer builds its index."""
    return f"wal2vec index {schema}.{table}"


LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
TRY_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))"


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
        conn.add_notice_handler(_pass_on)
        try:
            async with conn.transaction():
                # Another streamer's build of this table waits here, then finds it built.
                await conn.execute(LOCK_SQL, (index_lock(schema, table),))
                # SET LOCAL: the settings end with the build, not with the session.
                await conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (memory,))
                await conn.execute(
                    "SELECT set_config('max_parallel_maintenance_workers', "
                    "current_setting('max_parallel_workers'), true)"
                )
                if conn.info.server_version >= 140000:
                    # A build takes minutes; if `cdc run` is gone meanwhile (a kill, or its
                    # shutdown_timeout), the server ends it instead of building on for no one.
                    await conn.execute(
                        "SELECT set_config('client_connection_check_interval', '2s', true)"
                    )
                await _check_memory(conn, schema, table, vector_type)
                await conn.execute(index_ddl(schema, table, vector_type))
        finally:
            conn.remove_notice_handler(_pass_on)
        log.info(
            "built the HNSW index of %s.%s in %.1fs", schema, table, time.monotonic() - started
        )


async def _check_memory(conn: Conn, schema: str, table: str, vector_type: str) -> None:
    """Warn when the graph of the table's vectors will not fit in maintenance_work_mem."""
    query = sql.SQL(
        "SELECT count(*), pg_size_bytes(current_setting('maintenance_work_mem')), "
        "(SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attname = 'embedding') FROM {}"
    ).format(sql.Identifier(schema, table))
    name = sql.Identifier(schema, table).as_string(conn)
    row = await (await conn.execute(query, (name,))).fetchone()
    if row is None:
        return
    vectors, memory, dimensions = int(row[0]), int(row[1]), int(row[2])
    value = VALUE_HEADER + VALUE_BYTES.get(vector_type, 4) * max(dimensions, 0)
    needed = vectors * (value + GRAPH_BYTES_PER_ELEMENT)
    if needed <= memory:
        return
    log.warning(
        "the HNSW graph of %s.%s (%d vectors of %d dimensions) needs about %s of memory, more "
        "than snapshot.index_build_memory (%s): once the graph outgrows it, the build inserts "
        "into the index on disk, many times slower. Set snapshot.index_build_memory to at "
        "least %s, if the sink server has that much memory to spare",
        schema,
        table,
        vectors,
        dimensions,
        _size(needed),
        _size(memory),
        _size(math.ceil(needed * 1.1)),
    )


def _pass_on(diagnostic: Diagnostic) -> None:
    """The server's notices during the build: pgvector's says when the graph no longer fits."""
    primary, detail = diagnostic.message_primary or "", diagnostic.message_detail
    message = f"{primary} ({detail})" if detail else primary
    if "maintenance_work_mem" in primary:
        log.warning("index build: %s; raise snapshot.index_build_memory to speed it up", message)
    else:
        log.info("index build: %s", message)


def _size(size: int) -> str:
    """Bytes as MB or GB, rounded up to one decimal."""
    unit, scale = ("GB", 1 << 30) if size >= 1 << 30 else ("MB", 1 << 20)
    return f"{math.ceil(size * 10 / scale) / 10:g}{unit}"
