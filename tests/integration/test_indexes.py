"""The HNSW index built after a load (`cdc.sink.indexes`): it says when its memory is too small."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import AsyncConnection

from cdc.sink.indexes import build_indexes
from cdc.sink.schema import index_name, sink_table_ddl

DIMENSIONS = 256
ROWS = 1000  # about 1.7MB of graph at 256 dimensions


def load(dsn: str, table: str) -> None:
    """A sink table of ROWS random unit vectors, without its index."""
    vectors = np.random.default_rng(7).normal(size=(ROWS, DIMENSIONS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        for statement in sink_table_ddl("public", table, "vector", DIMENSIONS, index=False):
            conn.execute(statement)
        with (
            conn.cursor() as cursor,
            cursor.copy(
                f"COPY {table} (source_table, source_id, content, content_hash, model, embedding) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["text", "text", "text", "text", "text", "vector"])
            for n, vector in enumerate(vectors):
                copy.write_row(("public.t", str(n), "text", "hash", "model", vector))


def build(dsn: str, table: str, memory: str) -> None:
    async def go() -> None:
        conn = await AsyncConnection.connect(dsn, autocommit=True)
        try:
            await build_indexes(conn, [("public", table)], "vector", memory)
        finally:
            await conn.close()

    asyncio.run(go())


def index_is_valid(dsn: str, table: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
            (index_name(table),),
        ).fetchone()
    return bool(row and row[0])


def test_a_build_memory_too_small_for_the_graph_is_named_before_and_during_the_build(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    load(database, "small_memory")
    with caplog.at_level(logging.INFO, logger="cdc.sink.indexes"):
        build(database, "small_memory", "1MB")
    assert index_is_valid(database, "small_memory")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    estimate, notice = warnings
    assert f"({ROWS} vectors of {DIMENSIONS} dimensions)" in estimate
    assert "snapshot.index_build_memory (1MB)" in estimate
    assert "at least 1.9MB" in estimate
    assert "no longer fits into maintenance_work_mem" in notice
    assert "raise snapshot.index_build_memory" in notice


def test_a_graph_that_fits_builds_without_a_warning(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    load(database, "enough_memory")
    with caplog.at_level(logging.INFO, logger="cdc.sink.indexes"):
        build(database, "enough_memory", "64MB")
    assert index_is_valid(database, "enough_memory")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("built the HNSW index" in r.getMessage() for r in caplog.records)
