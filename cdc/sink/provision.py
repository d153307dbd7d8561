"""`cdc setup`: check the source, then create the publication and the sink-side tables.

Idempotent: statements whose object already exists in the right shape are not run again, so
`cdc run` can call it at every start and a least-privileged role never needs CREATE rights once
a DBA applied the DDL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
from psycopg import sql

from cdc.config import Settings
from cdc.db import Conn
from cdc.errors import ConfigError
from cdc.sink.indexes import TRY_LOCK_SQL, index_lock
from cdc.sink.schema import (
    SinkNames,
    alter_publication,
    create_publication,
    index_ddl,
    sink_ddl,
)
from cdc.sink.schema import (
    state_upgrades as schema_upgrades,
)
from cdc.sink.state import table_exists
from cdc.source.reads import SourceTable, describe_tables
from cdc.source.server import (
    Finding,
    assess,
    check_primary,
    failover_requirements,
    raise_for,
    server_facts,
)

log = logging.getLogger(__name__)
SETUP_LOCK = "wal2vec setup"
LOCK_SQL_SESSION = "SELECT pg_advisory_lock(hashtextextended(%s, 0))"
UNLOCK_SQL_SESSION = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"


async def inspect_source(settings: Settings, source: Conn) -> list[SourceTable]:
    """Everything `run` needs from the source to be true, checked up front: the server (its
    version, settings and plugins), then every configured table, column and key."""
    facts = await server_facts(source)
    findings = assess(facts, settings.source)
    raise_for(findings)
    check_primary(facts, settings.source)
    for finding in findings:
        log.warning("%s", finding.describe())
    return await describe_tables(source, settings.tables)


async def publication_sql(
    settings: Settings, source: Conn, tables: Sequence[SourceTable]
) -> list[sql.Composed]:
    """The statement that makes the publication match the configuration, if one is needed.

    Every configured table is published whole (no column list). A publication an earlier
    version made with column lists, or one missing a table added to the configuration, is
    brought to that form with `ALTER PUBLICATION ... SET TABLE`.
    """
    if settings.source.plugin != "pgoutput":
        return []  # wal2json is told the tables when streaming starts
    name = settings.source.publication
    wanted = {(t.config.schema_name, t.config.table_name): None for t in tables}
    current = await _published_now(source, name)
    if current is None:
        return [create_publication(name, list(tables))]
    if current != wanted:
        _warn_dropped(name, [f"{s}.{t}" for s, t in current if (s, t) not in wanted])
        return [alter_publication(name, list(tables))]
    return []


def _warn_dropped(publication: str, dropped: Sequence[str]) -> None:
    """Tables leave the publication: taken out of the configuration, or another streamer's
    that shares the publication's name by mistake (it would stop receiving them)."""
    if dropped:
        log.warning(
            "publication %s lists %s, which the configuration does not: they are taken out of "
            "it. If another streamer uses publication %s, give each streamer its own "
            "source.publication (and source.slot)",
            publication,
            ", ".join(sorted(dropped)),
            publication,
        )


async def _published_now(
    source: Conn, name: str
) -> dict[tuple[str, str], frozenset[str] | None] | None:
    exists = await (
        await source.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
    ).fetchone()
    if exists is None:
        return None
    rows = await (
        await source.execute(
            "SELECT p.schemaname, p.tablename, p.attnames, pr.prattrs IS NULL "
            "FROM pg_publication_tables p "
            "JOIN pg_publication pb ON pb.pubname = p.pubname "
            "JOIN pg_class c ON c.relname = p.tablename "
            "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = p.schemaname "
            "LEFT JOIN pg_publication_rel pr ON pr.prpubid = pb.oid AND pr.prrelid = c.oid "
            "WHERE p.pubname = %s",
            (name,),
        )
    ).fetchall()
    return {(r[0], r[1]): None if r[3] else frozenset(r[2]) for r in rows}


async def ensure(
    settings: Settings,
    source: Conn,
    sink: Conn,
    *,
    indexes: bool = True,
    check_shape: bool = True,
) -> list[SourceTable]:
    """Check the source and create whatever is missing; return the described tables.

    `indexes=False` leaves missing HNSW indexes to the snapshot, which builds them after its
    load (`cdc.sink.indexes`); `ensure_indexes` creates them otherwise.
    """
    tables = await inspect_source(settings, source)
    await _check_pgvector(sink)
    async with _setup_lock(sink):
        for statement in sink_ddl(settings, indexes=False):
            await _execute(sink, statement, "sink")
        for statement in await state_upgrades(settings, sink):
            await _execute(sink, statement, "sink")
    if indexes:
        await ensure_indexes(settings, sink)
    if check_shape:
        await check_sink_shape(settings, sink)
    for statement in await publication_sql(settings, source, tables):
        log.info("publication %s: %s", settings.source.publication, statement.as_string(source))
        await _execute(source, statement, "source")
    return tables


@asynccontextmanager
async def _setup_lock(sink: Conn) -> AsyncIterator[None]:
    """Hold the sink database's setup lock: streamers started at once (several sharing the
    sink, or a fresh deployment's replicas) would otherwise race on `CREATE ... IF NOT EXISTS`,
    which checks before it creates, and the loser fails on the catalog's unique index."""
    await sink.execute(LOCK_SQL_SESSION, (SETUP_LOCK,))
    try:
        yield
    finally:
        await sink.execute(UNLOCK_SQL_SESSION, (SETUP_LOCK,))


async def state_upgrades(settings: Settings, sink: Conn) -> list[sql.Composed]:
    """The DDL adding the columns that state tables made by an earlier version lack."""
    missing = []
    for table, column, statement in schema_upgrades(SinkNames.of(settings)):
        name = table.as_string(sink)
        row = await (
            await sink.execute(
                "SELECT to_regclass(%s) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped)",
                (name, name, column),
            )
        ).fetchone()
        if row is not None and row[0]:
            missing.append(statement)
    return missing


async def ensure_indexes(settings: Settings, sink: Conn) -> None:
    for schema, table in settings.sink_tables():
        async with sink.transaction():
            row = await (await sink.execute(TRY_LOCK_SQL, (index_lock(schema, table),))).fetchone()
            if not (row and row[0]):
                # Another streamer sharing the table is building its index after a load.
                log.info("the index of %s.%s is being built by another session", schema, table)
                continue
            await _execute(sink, index_ddl(schema, table, settings.sink.vector_type), "sink")


def wanted_vector_type(settings: Settings) -> str:
    return f"{settings.sink.vector_type}({settings.embedding.dimensions})"


async def vector_type_of(sink: Conn, schema: str, table: str) -> str | None:
    """The embedding column's type of a sink table, or None when the table does not exist."""
    row = await (
        await sink.execute(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attname = 'embedding'",
            (schema, table),
        )
    ).fetchone()
    return None if row is None else str(row[0])


async def check_sink_shape(settings: Settings, sink: Conn) -> None:
    """An existing sink table must hold vectors of the configured type and dimensions."""
    wanted = wanted_vector_type(settings)
    for schema, table in settings.sink_tables():
        found = await vector_type_of(sink, schema, table)
        if found is not None and found != wanted:
            raise ConfigError(
                f"sink table {schema}.{table} holds embedding {found}, but the configuration "
                f"asks for {wanted} (embedding.dimensions, sink.vector_type): run `cdc resync` "
                "to rebuild the vectors into a new table (readers keep the old one until it is "
                "complete), or set them back"
            )


async def _check_pgvector(sink: Conn) -> None:
    row = await (
        await sink.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).fetchone()
    if row is None:
        raise ConfigError(
            "the pgvector extension is not installed on the sink server: install pgvector "
            "(e.g. the postgresql-NN-pgvector package), then run `cdc setup` again"
        )


async def _execute(conn: Conn, statement: sql.Composed, where: str) -> None:
    try:
        await conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as error:
        raise ConfigError(
            f"the {where} role may not run: {statement.as_string(conn)}\n{error}\n"
            "Ask a DBA to apply it (`cdc setup --print-sql` prints all of it), then start again"
        ) from None
    except psycopg.errors.FeatureNotSupported as error:
        raise ConfigError(f"the {where} server refused: {error}") from None


async def setup_script(settings: Settings, source: Conn, sink: Conn) -> str:
    """All the DDL `ensure` would run, as a script for review, with what the source server
    itself needs first (settings only a superuser may change) and, for `source.failover`,
    what the primary and its standby need."""
    findings = assess(await server_facts(source), settings.source)
    tables = await describe_tables(source, settings.tables)
    statements = [
        *sink_ddl(settings),
        *await state_upgrades(settings, sink),
        *await publication_sql(settings, source, tables),
    ]
    lines = ["-- wal2vec setup: review, then run (sink statements first, then the source's)."]
    lines += [_server_fix(f) for f in findings if f.fix and (f.level == "error" or f.stalls)]
    if settings.source.failover:
        lines.append("\n".join(failover_requirements()))
    lines += [f"{statement.as_string(sink)};" for statement in statements]
    return "\n\n".join(lines) + "\n"


def _server_fix(finding: Finding) -> str:
    """A finding as script lines: the why as a comment, then the statements."""
    why = [f"-- {line}" for line in finding.message.splitlines()]
    return "\n".join([*why, *finding.fix])


async def check_sink_exists(settings: Settings, sink: Conn) -> None:
    """The sink tables `cdc setup` creates are all there, or a `ConfigError` naming one."""
    names = SinkNames.of(settings)
    targets = [sql.Identifier(*target) for target in settings.sink_tables()]
    for target in [*targets, names.state, names.dead_letters]:
        if not await table_exists(sink, target):
            raise ConfigError(
                f"sink table {target.as_string(sink)} does not exist: run `cdc setup` (or "
                "`cdc run`) first"
            )
