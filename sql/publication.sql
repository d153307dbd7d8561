-- wal2vec: the DDL `cdc setup` runs, as a template for a DBA to review and apply by hand.
-- `cdc setup --print-sql` prints the exact statements for your configuration.
-- Replace: wal2vec (role, slot, publication), app (database), public.articles (content tables),
-- and the columns. Source and sink may be the same database (the default).

-- 1. On the source server: logical decoding must be on (needs a restart).
--    ALTER SYSTEM SET wal_level = logical;
--    Bound the WAL a stalled slot may keep, so it cannot fill the disk (PostgreSQL 13+):
--    ALTER SYSTEM SET max_slot_wal_keep_size = '50GB';

-- 2. A least-privilege role: it may replicate and read the content tables, and write only in
--    the sink schema. It never needs superuser.
CREATE ROLE wal2vec WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT CONNECT ON DATABASE app TO wal2vec;
GRANT USAGE ON SCHEMA public TO wal2vec;
GRANT SELECT ON public.articles TO wal2vec;          -- every configured content table

-- 3. The publication: only the configured tables, each whole. No column list: PostgreSQL
--    refuses `ALTER COLUMN ... TYPE` of a column in a publication's column list, which would
--    block the application's migrations; wal2vec keeps only the configured columns itself.
--    A table added to the configuration: ALTER PUBLICATION wal2vec ADD TABLE public.faqs;
CREATE PUBLICATION wal2vec FOR TABLE public.articles;
--    A publication with column lists, made by an earlier wal2vec, becomes whole-table with
--    (`cdc setup` and `cdc run` do it):
--    ALTER PUBLICATION wal2vec SET TABLE public.articles;
-- wal2vec creates the slot itself on first start; do not create it here.

-- 4. The sink (in the sink database; same as the source by default).
CREATE EXTENSION IF NOT EXISTS vector;               -- needs a privileged role once
CREATE SCHEMA IF NOT EXISTS public;
GRANT USAGE, CREATE ON SCHEMA public TO wal2vec;     -- or a dedicated schema for the sink

CREATE TABLE IF NOT EXISTS public.cdc_embeddings (
    source_table text NOT NULL,          -- 'schema.table'
    source_id text NOT NULL,             -- primary key as text; composite: JSON array
    chunk integer NOT NULL DEFAULT 0,
    content text NOT NULL,               -- the exact text that was embedded
    content_hash text NOT NULL,          -- sha256 hex of content
    model text NOT NULL,
    embedding vector(1536) NOT NULL,     -- or halfvec(1536)
    metadata jsonb NOT NULL DEFAULT '{}',
    lsn pg_lsn,                          -- commit LSN of the change (null for snapshot rows)
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, source_id, chunk)
);
CREATE INDEX IF NOT EXISTS cdc_embeddings_embedding_idx
    ON public.cdc_embeddings USING hnsw (embedding vector_cosine_ops);  -- halfvec_cosine_ops

-- The checkpoint LSN, committed with the vectors it covers.
CREATE TABLE IF NOT EXISTS public.cdc_state (
    slot text PRIMARY KEY,
    checkpoint_lsn pg_lsn,
    snapshot_done boolean NOT NULL DEFAULT false,
    model text,
    dimensions integer,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- A transaction too large for the buffer is applied in parts: its commit LSN and how
    -- many of its changes the sink holds, so a restart resumes inside it.
    partial_commit_lsn pg_lsn,
    partial_changes bigint NOT NULL DEFAULT 0
);

-- Rows the embedding API rejected for good, with the error; the stream goes on without them.
CREATE TABLE IF NOT EXISTS public.cdc_dead_letters (
    source_table text NOT NULL,
    source_id text NOT NULL,
    chunk integer NOT NULL DEFAULT 0,
    error text NOT NULL,
    content text,
    lsn pg_lsn,
    attempts integer NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, source_id, chunk)
);

-- Snapshots and per-table resyncs: where each stands, and the types of each table's key,
-- content and metadata columns (a type change makes wal2vec re-read the table).
CREATE TABLE IF NOT EXISTS public.cdc_snapshots (
    slot text NOT NULL,
    source_table text NOT NULL,
    kind text NOT NULL,
    status text NOT NULL,
    phase text NOT NULL DEFAULT 'rows',
    last_key text[],
    last_source_id text,
    rows_done bigint NOT NULL DEFAULT 0,
    rows_estimated bigint,
    requested_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    column_types jsonb,
    PRIMARY KEY (slot, source_table)
);
-- Made by an earlier wal2vec, it lacks the last column:
-- ALTER TABLE public.cdc_snapshots ADD COLUMN IF NOT EXISTS column_types jsonb;

-- If a DBA creates the sink tables, the role needs only to write them:
GRANT SELECT, INSERT, UPDATE, DELETE
    ON public.cdc_embeddings, public.cdc_state, public.cdc_dead_letters, public.cdc_snapshots
    TO wal2vec;
