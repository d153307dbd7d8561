"""Type changes of configured columns: the application's migrations the stream cannot show.

`ALTER TABLE ... ALTER COLUMN ... TYPE` may rewrite every row, and logical decoding sends none
of that rewrite, yet a column's text form may change with its type (a numeric's scale, a
timestamp's precision, a varchar cut by `USING left(...)`). So the types of each table's key,
content and metadata columns are recorded in `cdc_snapshots.column_types` and compared with the
catalog when streaming starts and at every resync poll: a change requests a per-table resync
(`cdc.source.resync`), in which the content hash decides what is embedded again (`text` to
`varchar(5000)` embeds nothing). Renamed and dropped columns are not this module's concern: the
stream and the catalog check stop `cdc run` on those, naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from psycopg import sql
from psycopg.types.json import Jsonb

from cdc.db import Conn
from cdc.errors import ConfigError
from cdc.sink.progress import ProgressStore
from cdc.sink.schema import SinkNames
from cdc.source.reads import SourceTable

log = logging.getLogger(__name__)
ColumnTypes = dict[str, str]

_TYPES_QUERY = """
SELECT c.oid IS NOT NULL, a.attname, format_type(a.atttypid, a.atttypmod)
FROM (SELECT to_regclass(%s) AS oid) c
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    AND a.attname = ANY(%s)
"""


def changed_types(
    recorded: Mapping[str, str] | None, current: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """(column, recorded type, current type) for each column whose type changed.

    Nothing is compared before a first recording; a column in only one of them was added to
    or taken out of the configuration, or renamed, which is not a type change.
    """
    if recorded is None:
        return []
    return [
        (name, recorded[name], now)
        for name, now in current.items()
        if name in recorded and recorded[name] != now
    ]


def watched_columns(table: SourceTable) -> list[str]:
    """Columns whose text form reaches the sink: the key (the row's id), content, metadata."""
    names = (*table.key_names, *table.config.content_columns, *table.config.metadata)
    return list(dict.fromkeys(names))


async def column_types(source: Conn, table: SourceTable) -> ColumnTypes:
    """The catalog's types of `table`'s watched columns (those it still has).

    A table renamed or dropped under the stream is a `ConfigError`: its changes would come
    under a name the configuration does not know, and be passed over.
    """
    cursor = await source.execute(
        _TYPES_QUERY, (table.identifier.as_string(source), watched_columns(table))
    )
    rows = await cursor.fetchall()
    if not rows or not rows[0][0]:
        raise ConfigError(
            f"table {table.name} (tables[].table) is not in the source database any more "
            "(renamed, dropped, or moved to another schema?): put its new name in the "
            "configuration, or take it out, then run `cdc setup` and start `cdc run` again. "
            "Vectors are stored under the table's name: under a new one the table is read and "
            "embedded again, and the old name's vectors stay in the sink until deleted"
        )
    return {str(row[1]): str(row[2]) for row in rows if row[1] is not None}


class TypeWatch:
    """Compares and records the watched columns' types of one slot's tables in the sink."""

    def __init__(self, sink: Conn, names: SinkNames, slot: str) -> None:
        self._sink = sink
        self._table = names.snapshots
        self._slot = slot
        self._progress = ProgressStore(sink, names, slot)

    async def record(self, source: Conn, tables: Sequence[SourceTable]) -> None:
        """Record the current types, before a snapshot reads the tables."""
        for table in tables:
            await self._save(table.name, await column_types(source, table), create=True)

    async def check(self, source: Conn, tables: Sequence[SourceTable]) -> list[str]:
        """Request a resync of each table whose watched columns changed type; their names."""
        recorded = await self._recorded()
        resynced = []
        for table in tables:
            current = await column_types(source, table)
            before = recorded.get(table.name)
            if before == current:
                continue
            changed = changed_types(before, current)
            async with self._sink.transaction():
                await self._save(table.name, current, create=False)
                if changed:
                    await self._progress.request_resync([table.name])
            if changed:
                described = ", ".join(f"{c} {old} -> {new}" for c, old, new in changed)
                log.info(
                    "%s: column types changed (%s): resyncing the table; content whose text "
                    "is unchanged is not embedded again",
                    table.name,
                    described,
                )
                resynced.append(table.name)
        return resynced

    async def _recorded(self) -> dict[str, ColumnTypes | None]:
        query = sql.SQL("SELECT source_table, column_types FROM {} WHERE slot = %s").format(
            self._table
        )
        cursor = await self._sink.execute(query, (self._slot,))
        return {str(row[0]): row[1] for row in await cursor.fetchall()}

    async def _save(self, table: str, types: ColumnTypes, *, create: bool) -> None:
        if create:
            # Before the snapshot's own rows exist: it takes this one over, keeping the types.
            query = sql.SQL(
                "INSERT INTO {} (slot, source_table, kind, status, column_types) "
                "VALUES (%s, %s, 'snapshot', 'pending', %s) "
                "ON CONFLICT (slot, source_table) DO UPDATE SET column_types = "
                "EXCLUDED.column_types"
            ).format(self._table)
        else:
            query = sql.SQL(
                "UPDATE {} SET column_types = %s WHERE slot = %s AND source_table = %s"
            ).format(self._table)
        params = (self._slot, table, Jsonb(types)) if create else (Jsonb(types), self._slot, table)
        await self._sink.execute(query, params)
