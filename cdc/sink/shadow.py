"""Shadow sink tables for a full rebuild: load beside the live table, swap, retire the old one.

`cdc resync` (without `--table`) snapshots into `<table>__wal2vec_rebuild` while search keeps
answering from the live table, then swaps the two in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from cdc.config import Settings
from cdc.db import Conn
from cdc.errors import ConfigError
from cdc.sink.provision import vector_type_of, wanted_vector_type
from cdc.sink.schema import index_name, sink_table_ddl

REBUILD_SUFFIX = "__wal2vec_rebuild"
RETIRED_SUFFIX = "__wal2vec_retired"


def shadow_name(table: str, suffix: str = REBUILD_SUFFIX) -> str:
    # Identifiers stop at 63 bytes; keep the suffix whole so the name still says what it is.
    return table[: 63 - len(suffix)] + suffix


# How many foreign source tables a refusal names.
FOREIGN_SHOWN = 5


async def foreign_tables(conn: Conn, schema: str, table: str, own: Sequence[str]) -> list[str]:
    """Source tables other than `own` whose vectors sink table `schema.table` holds."""
    query = sql.SQL(
        "SELECT DISTINCT source_table FROM {} WHERE source_table <> ALL(%s) ORDER BY 1 LIMIT %s"
    ).format(sql.Identifier(schema, table))
    rows = await (await conn.execute(query, (list(own), FOREIGN_SHOWN))).fetchall()
    return [str(row[0]) for row in rows]


async def check_rebuild_owns(conn: Conn, settings: Settings) -> None:
    """A rebuild replaces whole sink tables: refuse one that holds other tables' vectors.

    Those belong to another streamer sharing the sink table (its own slot and tables), or to
    a table taken out of the configuration; the swap would drop them, and that streamer's
    state would still say they are there.
    """
    own = [t.table for t in settings.tables]
    for schema, table in settings.sink_tables():
        if await vector_type_of(conn, schema, table) is None:
            continue
        foreign = await foreign_tables(conn, schema, table, own)
        if foreign:
            raise ConfigError(
                f"sink table {schema}.{table} also holds vectors of {', '.join(foreign)}, "
                "which this configuration does not list (another streamer sharing the sink "
                "table, or a table taken out of tables[]): a rebuild for a new model replaces "
                "the whole table and would drop them. Give this streamer a sink table of its "
                "own (sink.table or tables[].target), change the model of every streamer that "
                f"shares {schema}.{table} together, or delete the rows of tables no streamer "
                "owns any more"
            )


async def prepare_shadow(conn: Conn, settings: Settings, schema: str, table: str) -> None:
    """The table a rebuild loads: kept from an interrupted rebuild if its type is right."""
    shadow = shadow_name(table)
    found = await vector_type_of(conn, schema, shadow)
    if found is not None and found != wanted_vector_type(settings):
        await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, shadow)))
    for statement in sink_table_ddl(
        schema, shadow, settings.sink.vector_type, settings.embedding.dimensions, index=False
    ):
        await conn.execute(statement)


async def swap(conn: Conn, schema: str, table: str) -> None:
    """Within the caller's transaction: the shadow becomes the table, the table retires."""
    retired = shadow_name(table, RETIRED_SUFFIX)
    await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, retired)))
    await conn.execute(
        sql.SQL("ALTER TABLE IF EXISTS {} RENAME TO {}").format(
            sql.Identifier(schema, table), sql.Identifier(retired)
        )
    )
    await conn.execute(
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            sql.Identifier(schema, shadow_name(table)), sql.Identifier(table)
        )
    )


async def retire(conn: Conn, schema: str, table: str) -> None:
    """Drop the retired table; the indexes keep the names they were built with, so give them
    the usual ones back."""
    retired = sql.Identifier(schema, shadow_name(table, RETIRED_SUFFIX))
    await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(retired))
    for built, usual in (
        (index_name(shadow_name(table)), index_name(table)),
        (f"{shadow_name(table)}_pkey"[:63], f"{table}_pkey"[:63]),
    ):
        await conn.execute(
            sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                sql.Identifier(schema, built), sql.Identifier(usual)
            )
        )
