"""Nearest-neighbour queries on the sink tables, in the shape their HNSW indexes serve.

`cdc search` and `cdc similar` (`cdc.commands.search`) plan the scope and print the hits; the
SQL, the pgvector settings and the fetch-more-while-long-rows-crowd-out-k loop live here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.db import Conn
from cdc.errors import SourceUnavailable

Target = tuple[str, str]  # (schema, table) of a sink table

# Chunks fetched per row wanted at first; doubled (up to MAX_FETCH) while long rows crowd out k.
OVERFETCH = 4
MAX_FETCH = 20_000
# pgvector's bounds for hnsw.ef_search; 40 is its default.
EF_SEARCH_MIN, EF_SEARCH_MAX = 40, 1000
ITERATIVE_SCAN_SINCE = (0, 8, 0)


@dataclass(frozen=True)
class Hit:
    """One source row found: its best chunk and that chunk's cosine distance (0 = same)."""

    source_table: str
    source_id: str
    chunk: int
    distance: float
    content: str
    metadata: dict[str, Any]

    @property
    def similarity(self) -> float:
        """Cosine similarity, 1 - distance."""
        return 1.0 - self.distance

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_table": self.source_table,
            "source_id": self.source_id,
            "chunk": self.chunk,
            "distance": self.distance,
            "similarity": self.similarity,
            "content": self.content,
            "metadata": self.metadata,
        }


def best_per_row(hits: Iterable[Hit]) -> list[Hit]:
    """One hit per source row, its nearest chunk, nearest rows first (ties by table and id)."""
    best: dict[tuple[str, str], Hit] = {}
    for hit in hits:
        key = (hit.source_table, hit.source_id)
        kept = best.get(key)
        if kept is None or (hit.distance, hit.chunk) < (kept.distance, kept.chunk):
            best[key] = hit
    return sorted(best.values(), key=lambda h: (h.distance, h.source_table, h.source_id))


def vector_text(values: Iterable[float]) -> str:
    """pgvector's text form; float32 values survive it exactly."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def nearest_query(
    target: Target, vector_type: str, where_columns: int, *, exclude: bool
) -> sql.Composed:
    """The nearest-chunks query on one sink table, in the shape its HNSW index serves.

    Parameters: `query` (a vector's text form), `tables` (source tables), `limit`, `key<i>` and
    `value<i>` for each metadata condition, and `self_table`/`self_id` when `exclude`.
    """
    conditions: list[sql.Composable] = [sql.SQL("source_table = ANY(%(tables)s)")]
    conditions += [
        sql.SQL("metadata ->> {} = {}").format(
            sql.Placeholder(f"key{i}"), sql.Placeholder(f"value{i}")
        )
        for i in range(where_columns)
    ]
    if exclude:
        conditions.append(
            sql.SQL("NOT (source_table = %(self_table)s AND source_id = %(self_id)s)")
        )
    return sql.SQL(
        "SELECT source_table, source_id, chunk, embedding <=> %(query)s::{type} AS distance, "
        "content, metadata FROM {target} WHERE {conditions} "
        "ORDER BY distance LIMIT %(limit)s"
    ).format(
        type=sql.SQL(vector_type),
        target=sql.Identifier(*target),
        conditions=sql.SQL(" AND ").join(conditions),
    )


def ef_search_for(fetch: int) -> int:
    return max(EF_SEARCH_MIN, min(fetch, EF_SEARCH_MAX))


async def nearest_rows(
    conn: Conn, statement: sql.Composed, params: dict[str, Any], k: int, iterative: bool
) -> list[Hit]:
    """The `k` nearest rows of one sink table: fetch chunks, dedupe, fetch more if too few."""
    fetch = k * OVERFETCH
    while True:
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search_for(fetch)),)
                )
                if iterative:
                    await conn.execute(
                        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"
                    )
                rows = await (await conn.execute(statement, {**params, "limit": fetch})).fetchall()
        except psycopg.OperationalError as error:
            raise SourceUnavailable(f"the sink failed during the search: {error}") from None
        hits = best_per_row(Hit(r[0], r[1], r[2], float(r[3]), r[4], r[5]) for r in rows)
        if len(hits) >= k or len(rows) < fetch or fetch >= MAX_FETCH:
            return hits[:k]
        fetch = min(fetch * 2, MAX_FETCH)


async def has_iterative_scan(conn: Conn) -> bool:
    row = await fetch_one(
        conn, sql.SQL("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    )
    return row is not None and version_tuple(str(row[0])) >= ITERATIVE_SCAN_SINCE


def version_tuple(version: str) -> tuple[int, ...]:
    """`0.8.1` -> (0, 8, 1); a part that is not a number counts as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


async def fetch_one(
    conn: Conn, query: sql.SQL | sql.Composed, params: Sequence[Any] | None = None
) -> tuple[Any, ...] | None:
    try:
        return await (await conn.execute(query, params)).fetchone()
    except psycopg.OperationalError as error:
        raise SourceUnavailable(f"the sink failed during the search: {error}") from None


async def has_vectors(conn: Conn, target: Target, tables: Sequence[str]) -> bool:
    """Whether the sink table holds any vector of these source tables."""
    query = sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE source_table = ANY(%s))").format(
        sql.Identifier(*target)
    )
    row = await fetch_one(conn, query, (list(tables),))
    return row is not None and bool(row[0])


async def row_vector(
    conn: Conn, target: Target, source_table: str, forms: Sequence[str], source_id: str
) -> tuple[str, str] | None:
    """(sink id as stored, mean of its chunks' vectors as text) of the row whose id is one of
    `forms` (`source_id` itself first), or None when the sink holds no vector for it."""
    query = sql.SQL(
        "SELECT source_id, avg(embedding)::text FROM {} "
        "WHERE source_table = %s AND source_id = ANY(%s) "
        "GROUP BY source_id ORDER BY source_id = %s DESC LIMIT 1"
    ).format(sql.Identifier(*target))
    row = await fetch_one(conn, query, (source_table, list(forms), source_id))
    return None if row is None else (str(row[0]), str(row[1]))
