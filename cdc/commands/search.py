"""`cdc search` and `cdc similar`: the source rows nearest to a text, or to another row.

Both are one query per sink table, `ORDER BY embedding <=> query LIMIT n`, the shape pgvector's
HNSW index (cosine) serves. Results are per source row: a row split into chunks counts once,
at its best chunk's distance, so the query over-fetches chunks and asks again for more when
the chunks of a few long rows fill the first answer.

Filters (`--where COL=VALUE`, on the sink's `metadata` jsonb, and `source_table` in a shared
sink table) are applied by the index scan, which without help stops after `hnsw.ef_search`
candidates and may return fewer rows than asked. So each query sets `hnsw.ef_search` to the
number of chunks wanted and, where pgvector is 0.8 or later, `hnsw.iterative_scan =
relaxed_order`, which keeps scanning until enough rows pass the filter (results come nearly in
order: they are sorted again here).

`similar` compares with the row's own stored vectors, without calling the embedding API: the
mean of its chunks' vectors (pgvector's `avg`), which for the usual one-chunk row is its vector.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from cdc.commands.scope import selected_tables
from cdc.config import Settings, TableConfig
from cdc.db import Conn, connect
from cdc.embedding.providers import EmbeddingProvider
from cdc.errors import CdcError, ConfigError
from cdc.ids import source_id_forms
from cdc.sink.nearest import (
    Hit,
    Target,
    best_per_row,
    has_iterative_scan,
    has_vectors,
    nearest_query,
    nearest_rows,
    row_vector,
    vector_text,
)
from cdc.sink.provision import check_sink_exists, check_sink_shape
from cdc.sink.store import Sink

DEFAULT_K = 10
MAX_K = 1000
SNIPPET_WIDTH = 60


class NoVector(CdcError):
    """`similar` was asked about a row the sink holds no vector for (exit 1)."""

    exit_code = 1


# -- the commands -----------------------------------------------------------------------------


async def search(
    settings: Settings,
    provider: EmbeddingProvider,
    text: str,
    *,
    table: str | None = None,
    k: int = DEFAULT_K,
    where: Mapping[str, str] | None = None,
) -> list[Hit]:
    """The `k` source rows (of `table`, else of every configured table) nearest to `text`,
    embedded with `provider`, whose metadata matches every `where` column = value."""
    scope = _search_scope(settings, text, table, k, where)
    async with AsyncExitStack() as stack:
        conn = await _open(settings, stack)
        await _check_model(settings, conn)
        query = vector_text(await _embed_query(provider, text))
        return await _nearest_everywhere(
            settings, conn, scope, query=query, where=where or {}, k=k, itself=None
        )


async def check_search(
    settings: Settings,
    text: str,
    *,
    table: str | None = None,
    k: int = DEFAULT_K,
    where: Mapping[str, str] | None = None,
) -> bool:
    """What `search` checks before it embeds anything, without a provider: the arguments, the
    sink tables (they exist, in the configured shape) and that their vectors are of
    `embedding.model`. Returns whether the tables searched hold any vector at all, so a caller
    can skip building a provider (loading a local model takes seconds) to search nothing."""
    scope = _search_scope(settings, text, table, k, where)
    async with AsyncExitStack() as stack:
        conn = await _open(settings, stack)
        await _check_model(settings, conn)
        for target, tables in scope.items():
            if await has_vectors(conn, target, tables):
                return True
    return False


def _search_scope(
    settings: Settings,
    text: str,
    table: str | None,
    k: int,
    where: Mapping[str, str] | None,
) -> dict[Target, list[str]]:
    if not text.strip():
        raise ConfigError("the search text is empty: say what to look for")
    return plan_scope(settings, selected_tables(settings, table), where or {}, k)


async def similar(
    settings: Settings,
    *,
    table: str,
    source_id: str,
    in_table: str | None = None,
    k: int = DEFAULT_K,
    where: Mapping[str, str] | None = None,
) -> list[Hit]:
    """The `k` rows of `in_table` (default `table`) nearest to row `source_id` of `table`,
    by the mean of that row's stored vectors; the row itself is never among them."""
    (origin,) = selected_tables(settings, table)
    scope = plan_scope(settings, selected_tables(settings, in_table or table), where or {}, k)
    async with AsyncExitStack() as stack:
        conn = await _open(settings, stack)
        found_id, query = await _row_vector(settings, conn, origin, source_id)
        itself = (origin.table, found_id)
        return await _nearest_everywhere(
            settings, conn, scope, query=query, where=where or {}, k=k, itself=itself
        )


# -- pure parts -------------------------------------------------------------------------------


def parse_where(items: Sequence[str] | None) -> dict[str, str]:
    """`["author_id=7", "lang=en"]` -> {"author_id": "7", "lang": "en"}; the value is the text
    after the first `=` (it may be empty or hold `=`)."""
    where: dict[str, str] = {}
    for item in items or ():
        column, equals, value = item.partition("=")
        column = column.strip()
        if not equals or not column:
            raise ConfigError(f"--where {item!r}: write it as COLUMN=VALUE, e.g. author_id=7")
        if column in where:
            raise ConfigError(f"--where {column} is given twice; conditions are ANDed")
        where[column] = value
    return where


def plan_scope(
    settings: Settings, tables: Sequence[TableConfig], where: Mapping[str, str], k: int
) -> dict[Target, list[str]]:
    """Sink table -> the source tables to search in it.

    A `where` column must be a metadata column of a table searched (else `ConfigError` naming
    it); tables without one of the columns cannot match and are left out.
    """
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"-k {k}: ask for between 1 and {MAX_K} rows")
    known = {column for config in tables for column in config.metadata}
    for column in where:
        if column not in known:
            searched = ", ".join(config.table for config in tables)
            offered = ", ".join(sorted(known)) or "none"
            raise ConfigError(
                f"--where {column}: not a metadata column of {searched} "
                f"(tables[].metadata: {offered})"
            )
    matching = [config for config in tables if set(where) <= set(config.metadata)]
    if not matching:
        raise ConfigError(
            f"--where {', '.join(where)}: no configured table has all of these metadata "
            "columns; search one table with --table"
        )
    scope: dict[Target, list[str]] = {}
    for config in matching:
        scope.setdefault(settings.target_of(config), []).append(config.table)
    return scope


def render_hits(hits: Sequence[Hit]) -> str:
    """A table for people: rank, cosine distance, table, id, a line of content, metadata."""
    if not hits:
        return "no matching rows"
    chunked = any(hit.chunk for hit in hits)
    header = ["#", "distance", "table", "id", *(["chunk"] if chunked else []), "content"]
    header.append("metadata")
    rows = [
        [
            str(rank),
            f"{hit.distance:.4f}",
            hit.source_table,
            hit.source_id,
            *([str(hit.chunk)] if chunked else []),
            snippet(hit.content),
            _metadata_words(hit.metadata),
        ]
        for rank, hit in enumerate(hits, 1)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def hits_json(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """What `--json` prints: the hits in rank order, each with its rank."""
    return [{"rank": rank, **hit.as_dict()} for rank, hit in enumerate(hits, 1)]


def snippet(content: str, width: int = SNIPPET_WIDTH) -> str:
    line = " ".join(content.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _metadata_words(metadata: Mapping[str, Any]) -> str:
    return " ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in metadata.items()
    )


# -- database ---------------------------------------------------------------------------------


async def _open(settings: Settings, stack: AsyncExitStack) -> Conn:
    conn = await connect(settings.sink_dsn, "sink")
    stack.push_async_callback(conn.close)
    await check_sink_exists(settings, conn)
    await check_sink_shape(settings, conn)
    return conn


async def _check_model(settings: Settings, conn: Conn) -> None:
    """A query embedded with one model means nothing against vectors of another."""
    state = await Sink(conn, settings).state.load()
    model = settings.embedding.model
    if state.model is not None and state.model != model:
        raise ConfigError(
            f"the sink holds vectors of model {state.model} but embedding.model is {model}: "
            "a query embedded with it cannot be compared with them. Set embedding.model back, "
            "or run `cdc resync` to rebuild the vectors with the new model"
        )


async def _embed_query(provider: EmbeddingProvider, text: str) -> Sequence[float]:
    result = await provider.embed([text])
    vector = result.vectors[0]
    if vector is None:
        raise ConfigError(
            f"the embedding service rejected the search text: {result.errors.get(0, 'no reason')}"
        )
    return [float(v) for v in vector]


async def _row_vector(
    settings: Settings, conn: Conn, origin: TableConfig, source_id: str
) -> tuple[str, str]:
    """The row's sink id as stored and the mean of its chunks' vectors, in text form."""
    target = settings.target_of(origin)
    forms = source_id_forms(source_id)
    row = await row_vector(conn, target, origin.table, forms, source_id)
    if row is None:
        raise NoVector(
            f"{origin.table} id {source_id} has no vector in {'.'.join(target)}: no such row, "
            "its content is empty, or it is not embedded yet (see `cdc status` and "
            "`cdc dead-letters list`)"
        )
    return row


async def _nearest_everywhere(
    settings: Settings,
    conn: Conn,
    scope: Mapping[Target, list[str]],
    *,
    query: str,
    where: Mapping[str, str],
    k: int,
    itself: tuple[str, str] | None,
) -> list[Hit]:
    iterative = await has_iterative_scan(conn)
    hits: list[Hit] = []
    for target, tables in scope.items():
        params: dict[str, Any] = {"query": query, "tables": tables}
        for i, (column, value) in enumerate(where.items()):
            params[f"key{i}"], params[f"value{i}"] = column, value
        if itself is not None and itself[0] in tables:
            params["self_table"], params["self_id"] = itself
        statement = nearest_query(
            target, settings.sink.vector_type, len(where), exclude="self_id" in params
        )
        hits += await nearest_rows(conn, statement, params, k, iterative)
    return best_per_row(hits)[:k]
