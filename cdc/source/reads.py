"""What wal2vec reads from the source database outside the replication stream.

Catalog checks for `setup` and `run` (tables, columns, keys, wal_level), the rows of a table in
key order for snapshots, and current values of rows whose unchanged TOAST values the stream did
not resend. Every identifier from configuration goes through `psycopg.sql.Identifier`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdc.config import TableConfig
from cdc.db import Conn
from cdc.errors import ConfigError
from cdc.ids import key_values, render_source_id
from cdc.replication.changes import column_advice, missing_columns, missing_columns_error
from cdc.rows import RowState

Columns = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SourceTable:
    """A configured table as the catalog describes it."""

    config: TableConfig
    key_names: Columns
    key_types: tuple[str, ...]
    replica_identity: str  # d(efault) | i(ndex) | f(ull) | n(othing)

    @property
    def name(self) -> str:
        return self.config.table

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.config.schema_name, self.config.table_name)

    def select_list(self) -> sql.Composed:
        """Key, content and metadata columns in their text form, the way pgoutput sends them."""
        columns = (*self.key_names, *self.config.content_columns, *self.config.metadata)
        return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)


async def describe_tables(conn: Conn, tables: Sequence[TableConfig]) -> list[SourceTable]:
    """Check every configured table, column and key against the catalog."""
    return [await _describe(conn, table) for table in tables]


_TABLE_QUERY = """
SELECT c.oid, c.relreplident
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""
_COLUMNS_QUERY = """
SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
"""
# The key that identifies a row: the replica identity index when there is one, else the
# primary key (replica identity DEFAULT and FULL both use the primary key for our purposes).
_KEY_QUERY = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND (CASE WHEN %s = 'i' THEN i.indisreplident ELSE i.indisprimary END)
ORDER BY k.position
"""


async def _describe(conn: Conn, table: TableConfig) -> SourceTable:
    found = await (
        await conn.execute(_TABLE_QUERY, (table.schema_name, table.table_name))
    ).fetchone()
    if found is None:
        raise ConfigError(
            f"table {table.table} (from tables[].table) does not exist in the source database; "
            "check the schema and the exact, case-sensitive name"
        )
    oid, identity = found[0], str(found[1])
    rows = await (await conn.execute(_COLUMNS_QUERY, (oid,))).fetchall()
    existing = {str(row[0]) for row in rows}
    missing = missing_columns(table, existing)
    if missing:
        raise ConfigError(
            f"{missing_columns_error(table, missing)} (The table has {sorted(existing)}.)"
        )
    keys = await (await conn.execute(_KEY_QUERY, (oid, identity))).fetchall()
    if not keys or identity == "n":
        raise ConfigError(
            f"{table.table} has no primary key (replica identity {identity!r}): wal2vec needs a "
            "key to identify rows; add a primary key or set REPLICA IDENTITY USING INDEX"
        )
    return SourceTable(
        config=table,
        key_names=tuple(str(k[0]) for k in keys),
        key_types=tuple(str(k[1]) for k in keys),
        replica_identity=identity,
    )


@contextmanager
def columns_checked(table: SourceTable) -> Iterator[None]:
    """A configured column renamed or dropped since the start: a `ConfigError` saying so."""
    try:
        yield
    except psycopg.errors.UndefinedColumn as error:
        raise ConfigError(
            f"{table.name}: reading the source failed, {error.diag.message_primary} (a "
            f"configured column renamed or dropped?). {column_advice(table.name)}"
        ) from None


def rows_by_keys_query(table: SourceTable) -> sql.Composed:
    """Select rows by their key given as one text array per key column."""
    arrays = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in table.key_names)
    names = [sql.Identifier(f"k{i}") for i in range(len(table.key_names))]
    matches = sql.SQL(" AND ").join(
        sql.SQL("t.{} = k.{}::{}").format(sql.Identifier(column), alias, sql.SQL(type_name))
        for column, alias, type_name in zip(table.key_names, names, table.key_types, strict=True)
    )
    return sql.SQL("SELECT {} FROM {} AS t JOIN unnest({}) AS k({}) ON {}").format(
        _qualified_select_list(table),
        table.identifier,
        arrays,
        sql.SQL(", ").join(names),
        matches,
    )


def _qualified_select_list(table: SourceTable) -> sql.Composed:
    columns = (*table.key_names, *table.config.content_columns, *table.config.metadata)
    return sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns)


async def fetch_rows(
    conn: Conn,
    table: SourceTable,
    keys: Sequence[tuple[str, ...]],
) -> dict[tuple[str, ...], tuple[str | None, ...]]:
    """Current rows for `keys`: key values -> (content..., metadata...) in text form."""
    if not keys:
        return {}
    arrays = [list(column) for column in zip(*keys, strict=True)]
    with columns_checked(table):
        cursor = await conn.execute(rows_by_keys_query(table), arrays)
    width = len(table.key_names)
    return {
        tuple(str(v) for v in row[:width]): tuple(row[width:]) for row in await cursor.fetchall()
    }


async def stream_table(
    conn: Conn, table: SourceTable, batch_rows: int, sample: sql.Composable | None = None
) -> AsyncIterator[list[tuple[str | None, ...]]]:
    """Every row of `table` in key order, in lists of `batch_rows`, through a server-side cursor;
    with `sample` (a `TABLESAMPLE` clause, see `tablesample`), only the rows it draws.

    Runs inside the caller's transaction, so it sees the caller's snapshot.
    """
    # Qualified: an unqualified name would sort by the text output column of the same name.
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in table.key_names)
    query = sql.SQL("SELECT {} FROM {} AS t {} ORDER BY {}").format(
        table.select_list(), table.identifier, sample or sql.SQL(""), order
    )
    async with conn.cursor(name=f"wal2vec_snapshot_{abs(hash(table.name))}") as cursor:
        cursor.itersize = batch_rows
        with columns_checked(table):
            await cursor.execute(query)
        while rows := await cursor.fetchmany(batch_rows):
            yield rows


def tablesample(method: str, percent: float, seed: int) -> sql.Composed:
    """`TABLESAMPLE method (percent) REPEATABLE (seed)`: `method` is SYSTEM (whole pages, read
    only those) or BERNOULLI (single rows, every page scanned); the same seed draws the same
    sample of an unchanged table."""
    if method not in {"SYSTEM", "BERNOULLI"}:
        raise ValueError(f"no TABLESAMPLE method {method!r}")
    # A numeric literal: the methods take a real, and numeric converts to it implicitly.
    return sql.SQL("TABLESAMPLE {} ({}) REPEATABLE ({})").format(
        sql.SQL(method), sql.SQL(f"{percent:.8f}"), sql.Literal(seed)
    )


def row_state(table: SourceTable, row: Sequence[str | None]) -> RowState:
    """A source row read by `stream_table` (key, content, metadata as text) as a `RowState`."""
    width = len(table.key_names)
    return current_state(table, [str(value) for value in row[:width]], row[width:])


def current_state(table: SourceTable, key: Sequence[str], values: Sequence[str | None]) -> RowState:
    """A source row's current state from its key and its (content..., metadata...) values."""
    content_end = len(table.config.content_columns)
    return RowState(
        source_table=table.name,
        source_id=render_source_id(key),
        content=table.config.content.render(values[:content_end]),
        metadata=dict(zip(table.config.metadata, values[content_end:], strict=True)),
        lsn=None,
    )


async def existing_ids(conn: Conn, table: SourceTable, source_ids: Sequence[str]) -> set[str]:
    """Which of these sink ids name a row the source has (in the current snapshot)."""
    width = len(table.key_names)
    keys = [key for key in (key_values(i, width) for i in source_ids) if key is not None]
    return {render_source_id(key) for key in await _present_keys(conn, table, keys)}


async def _present_keys(
    conn: Conn, table: SourceTable, keys: Sequence[tuple[str, ...]]
) -> list[tuple[str, ...]]:
    """The keys among `keys` that exist, as the source renders them.

    An id that cannot be cast to the key's type (say "abc" for a bigint key) names no row,
    but fails the whole lookup: it runs in a savepoint, and a failing batch is halved until
    the bad ids stand alone.
    """
    if not keys:
        return []
    try:
        async with conn.transaction():
            cursor = await conn.execute(
                _keys_query(table), [list(c) for c in zip(*keys, strict=True)]
            )
            return [tuple(str(v) for v in row) for row in await cursor.fetchall()]
    except psycopg.DataError:
        if len(keys) == 1:
            return []
        half = len(keys) // 2
        return [
            *await _present_keys(conn, table, keys[:half]),
            *await _present_keys(conn, table, keys[half:]),
        ]


def _keys_query(table: SourceTable) -> sql.Composed:
    """The key columns (as text) of the rows whose keys are given as one text array per column."""
    aliases = [sql.Identifier(f"k{i}") for i in range(len(table.key_names))]
    matches = sql.SQL(" AND ").join(
        sql.SQL("t.{} = k.{}::{}").format(sql.Identifier(column), alias, sql.SQL(type_name))
        for column, alias, type_name in zip(table.key_names, aliases, table.key_types, strict=True)
    )
    return sql.SQL("SELECT {} FROM {} AS t JOIN unnest({}) AS k({}) ON {}").format(
        sql.SQL(", ").join(
            sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in table.key_names
        ),
        table.identifier,
        sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in table.key_names),
        sql.SQL(", ").join(aliases),
        matches,
    )
