"""The DDL wal2vec needs, as statements `cdc setup` runs or prints for review.

Everything is idempotent (`IF NOT EXISTS`, or compared with the catalog first) so `setup` and
`run` may apply it every time.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from cdc.config import Settings
from cdc.source.reads import SourceTable

STATE_TABLE = "cdc_state"
DEAD_LETTER_TABLE = "cdc_dead_letters"
SNAPSHOTS_TABLE = "cdc_snapshots"
OPS = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops"}


@dataclass(frozen=True, slots=True)
class SinkNames:
    """Identifiers of the sink-side tables, resolved once from configuration."""

    schema: str
    state: sql.Identifier
    dead_letters: sql.Identifier
    snapshots: sql.Identifier

    @classmethod
    def of(cls, settings: Settings) -> SinkNames:
        schema = settings.sink.schema_
        return cls(
            schema=schema,
            state=sql.Identifier(schema, STATE_TABLE),
            dead_letters=sql.Identifier(schema, DEAD_LETTER_TABLE),
            snapshots=sql.Identifier(schema, SNAPSHOTS_TABLE),
        )


def index_name(table: str) -> str:
    # PostgreSQL truncates identifiers at 63 bytes; keep the suffix that says what it is.
    return f"{table[:50]}_embedding_idx"


def sink_table_ddl(
    schema: str, table: str, vector_type: str, dimensions: int, *, index: bool = True
) -> list[sql.Composed]:
    target = sql.Identifier(schema, table)
    statements = [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (\n"
            "    source_table text NOT NULL,\n"
            "    source_id text NOT NULL,\n"
            "    chunk integer NOT NULL DEFAULT 0,\n"
            "    content text NOT NULL,\n"
            "    content_hash text NOT NULL,\n"
            "    model text NOT NULL,\n"
            "    embedding {}({}) NOT NULL,\n"
            "    metadata jsonb NOT NULL DEFAULT '{{}}',\n"
            "    lsn pg_lsn,\n"
            "    updated_at timestamptz NOT NULL DEFAULT now(),\n"
            "    PRIMARY KEY (source_table, source_id, chunk)\n"
            ")"
        ).format(target, sql.SQL(vector_type), sql.Literal(dimensions)),
    ]
    if index:
        statements.append(index_ddl(schema, table, vector_type))
    return statements


def index_ddl(schema: str, table: str, vector_type: str) -> sql.Composed:
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {})").format(
        sql.Identifier(index_name(table)), sql.Identifier(schema, table), sql.SQL(OPS[vector_type])
    )


def state_ddl(names: SinkNames) -> list[sql.Composed]:
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(names.schema)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (\n"
            "    slot text PRIMARY KEY,\n"
            "    checkpoint_lsn pg_lsn,\n"
            "    snapshot_done boolean NOT NULL DEFAULT false,\n"
            "    model text,\n"
            "    dimensions integer,\n"
            "    updated_at timestamptz NOT NULL DEFAULT now(),\n"
            # A transaction applied in part (too large for the buffer): its commit LSN and
            # how many of its changes the sink holds.
            "    partial_commit_lsn pg_lsn,\n"
            "    partial_changes bigint NOT NULL DEFAULT 0,\n"
            # The instance leading the slot and its term's token (`cdc.sink.fence`).
            "    leader text,\n"
            "    leader_token uuid,\n"
            "    leader_since timestamptz,\n"
            # With parallel writers (`sink.writers`), each one's position: a JSON array of
            # [checkpoint, partial commit, partial changes] (`cdc.sink.state`).
            "    writer_positions jsonb\n"
            ")"
        ).format(names.state),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (\n"
            "    source_table text NOT NULL,\n"
            "    source_id text NOT NULL,\n"
            "    chunk integer NOT NULL DEFAULT 0,\n"
            "    error text NOT NULL,\n"
            "    content text,\n"
            "    lsn pg_lsn,\n"
            "    attempts integer NOT NULL DEFAULT 1,\n"
            "    first_failed_at timestamptz NOT NULL DEFAULT now(),\n"
            "    last_failed_at timestamptz NOT NULL DEFAULT now(),\n"
            "    PRIMARY KEY (source_table, source_id, chunk)\n"
            ")"
        ).format(names.dead_letters),
        # One row per configured table: its last snapshot or resync, and where it got to.
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (\n"
            "    slot text NOT NULL,\n"
            "    source_table text NOT NULL,\n"
            "    kind text NOT NULL,\n"
            "    status text NOT NULL,\n"
            "    phase text NOT NULL DEFAULT 'rows',\n"
            "    last_key text[],\n"
            "    last_source_id text,\n"
            "    rows_done bigint NOT NULL DEFAULT 0,\n"
            "    rows_estimated bigint,\n"
            "    requested_at timestamptz NOT NULL DEFAULT now(),\n"
            "    started_at timestamptz,\n"
            "    finished_at timestamptz,\n"
            "    updated_at timestamptz NOT NULL DEFAULT now(),\n"
            "    column_types jsonb,\n"
            "    PRIMARY KEY (slot, source_table)\n"
            ")"
        ).format(names.snapshots),
    ]


def state_upgrades(names: SinkNames) -> list[tuple[sql.Identifier, str, sql.Composed]]:
    """Columns that state tables made by an earlier version lack: (table, column, the DDL
    that adds it). Run only when the column is missing: ALTER TABLE needs the table's owner
    even when there is nothing to do."""
    return [
        # The types of the watched columns (`cdc.sink.migrations`).
        (
            names.snapshots,
            "column_types",
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS column_types jsonb").format(
                names.snapshots
            ),
        ),
        # A checkpoint inside a transaction applied in parts (`cdc.replication.positions`).
        (
            names.state,
            "partial_commit_lsn",
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS partial_commit_lsn pg_lsn, "
                "ADD COLUMN IF NOT EXISTS partial_changes bigint NOT NULL DEFAULT 0"
            ).format(names.state),
        ),
        # The leader's term (`cdc.sink.fence`).
        (
            names.state,
            "leader_token",
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS leader text, "
                "ADD COLUMN IF NOT EXISTS leader_token uuid, "
                "ADD COLUMN IF NOT EXISTS leader_since timestamptz"
            ).format(names.state),
        ),
        # Parallel writers' positions (`cdc.sink.state`).
        (
            names.state,
            "writer_positions",
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS writer_positions jsonb").format(
                names.state
            ),
        ),
    ]


def sink_ddl(settings: Settings, *, indexes: bool = True) -> list[sql.Composed]:
    """Extension, state tables and sink tables; `indexes=False` leaves the HNSW indexes to a
    snapshot that loads first and indexes after."""
    statements = [sql.SQL("CREATE EXTENSION IF NOT EXISTS vector").format()]
    statements += state_ddl(SinkNames.of(settings))
    for schema, table in settings.sink_tables():
        statements += sink_table_ddl(
            schema, table, settings.sink.vector_type, settings.embedding.dimensions, index=indexes
        )
    return statements


def publication_table_list(tables: list[SourceTable]) -> sql.Composed:
    """Each configured table whole, with no column list.

    A column list would tie the listed columns to the publication, and PostgreSQL then refuses
    the application's `ALTER TABLE ... ALTER COLUMN ... TYPE` of any of them. The decoder keeps
    only the configured columns (`cdc.replication.changes.TableShape`), so publishing whole tables
    costs decoding work, never correctness.
    """
    return sql.SQL(", ").join(table.identifier for table in tables)


def create_publication(name: str, tables: list[SourceTable]) -> sql.Composed:
    return sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
        sql.Identifier(name), publication_table_list(tables)
    )


def alter_publication(name: str, tables: list[SourceTable]) -> sql.Composed:
    return sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(
        sql.Identifier(name), publication_table_list(tables)
    )
