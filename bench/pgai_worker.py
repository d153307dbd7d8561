"""pgai's vectorizer worker on the bench's rows: the reference of issue 14's row c.

pgai lives in a venv of its own (its pins must not meet wal2vec's), given by `--pgai-venv`;
the bench never installs it. Its library installs its catalog (`ai.*`) into a plain database,
no `ai` extension needed; `ai.create_vectorizer` puts a trigger and a queue table on the source
table; the worker (`pgai vectorizer worker`) drains the queue in batches and writes the vectors
into a destination table. Here, on the bench's embedded PostgreSQL 18:

1. a fresh database with `articles`, pgai's catalog and a vectorizer over it: title + body
   formatted as wal2vec renders them (the two joined by a blank line), no chunking, OpenAI
   embeddings at 1536 dimensions from the bench's endpoint, no index on the destination, no
   scheduling (the worker runs on its own), batch 500 and concurrency 4 (the issue's setting);
2. the same rows as wal2vec's no-index run, inserted in transactions of 500 (the trigger
   queues each row);
3. `pgai vectorizer worker --once` as a subprocess of the venv, timed from its start until the
   destination holds a vector for every row, and stopped by its pid.

The worker reads OPENAI_API_KEY (any value does for the bench's endpoint) and counts tokens
with tiktoken; tiktoken's encodings come from the cache pgai ships in its package (the worker
is pointed at it with TIKTOKEN_CACHE_DIR), so nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.common import fresh_database, poll, rate, stop_process
from bench.e2e import ARTICLES_DDL, DIMENSIONS, INSERT_BATCH, Context, insert_rows
from bench.fast_endpoint import measure_ceiling

ENV_HINT = "--pgai-venv DIR or WAL2VEC_BENCH_PGAI_VENV"
MODEL = "text-embedding-3-small"  # a model tiktoken knows, so pgai truncates as it would
BATCH_SIZE = 500
CONCURRENCY = 4
# What the worker imports on this path (the `vectorizer-worker` extra's other packages serve
# documents, S3 and other providers, and are imported only when used).
WORKER_MODULES = ("tiktoken", "openai", "pgvector", "numpy", "ijson", "filetype")
INSTALL_HINT = (
    "pip install pgai tiktoken 'openai<2' 'pgvector<1' numpy ijson filetype exceptiongroup "
    "tokenizers 'ollama<0.6' 'langchain-text-splitters<1' (or pgai[vectorizer-worker])"
)

# Run by the venv's python: what is installed, where pgai's tiktoken cache is, and that the
# model's encoding loads from it (a missing file would be a download, which fails here).
PROBE = """
import importlib.metadata as m, importlib.util as u, json, os, sys
out = {"pgai": m.version("pgai"), "missing": [n for n in sys.argv[2:] if u.find_spec(n) is None]}
out["versions"] = {n: m.version(n) for n in ("tiktoken", "openai", "psycopg") if u.find_spec(n)}
if not out["missing"]:
    from pgai.vectorizer.vectorizer import TIKTOKEN_CACHE_DIR
    os.environ["TIKTOKEN_CACHE_DIR"] = out["tiktoken_cache"] = TIKTOKEN_CACHE_DIR
    import tiktoken
    out["encoding"] = tiktoken.encoding_for_model(sys.argv[1]).name
print(json.dumps(out))
"""

# The settings the issue names; the SQL is pgai's API, the values are ours.
CREATE_VECTORIZER = """
SELECT ai.create_vectorizer(
    'public.articles'::regclass,
    loading => ai.loading_column('body'),
    formatting => ai.formatting_python_template(%(template)s),
    chunking => ai.chunking_none(),
    embedding => ai.embedding_openai(%(model)s, %(dimensions)s, base_url => %(base_url)s),
    destination => ai.destination_table('articles_pgai'),
    indexing => ai.indexing_none(),
    scheduling => ai.scheduling_none(),
    processing => ai.processing_default(batch_size => %(batch)s, concurrency => %(concurrency)s)
)
"""
TEMPLATE = "$title\n\n$chunk"  # wal2vec's render_content of [title, body]: a blank line between

DESTINATION = """
SELECT config->'destination'->>'target_schema', config->'destination'->>'target_table'
FROM ai.vectorizer WHERE id = %s
"""


@dataclass(frozen=True)
class PgaiVenv:
    """A venv where pgai's worker can run."""

    root: Path
    version: str
    tiktoken_cache: str
    versions: dict[str, str]

    @property
    def cli(self) -> str:
        return str(self.root / "bin" / "pgai")

    def env(self) -> dict[str, str]:
        """The worker's environment: the key it asks for, the shipped tiktoken cache."""
        return own_env() | {
            "OPENAI_API_KEY": "wal2vec-bench",
            "TIKTOKEN_CACHE_DIR": self.tiktoken_cache,
            "DD_TRACE_ENABLED": "false",
        }


def own_env() -> dict[str, str]:
    """This environment without the bench's own Python setup (PYTHONPATH would put this
    repository, and its `bench` and `tests`, on the venv's path)."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}


def find_venv(venv: Path | None) -> PgaiVenv | dict[str, Any]:
    """The venv, or why it cannot be used (reported as the row's status, not as an error)."""
    if venv is None:
        return {"status": "not installed", "hint": ENV_HINT}
    python = venv / "bin" / "python"
    if not python.exists():
        return {"status": "not installed", "looked_in": str(venv)}
    found = subprocess.run(
        [str(python), "-c", PROBE, MODEL, *WORKER_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=own_env(),
    )
    if found.returncode != 0:
        last = (found.stderr.strip().splitlines() or [""])[-1]  # the exception, not the trace
        return {"status": "not installed", "looked_in": str(venv), "probe": last[-300:]}
    probe = json.loads(found.stdout)
    if probe["missing"]:
        return {
            "status": "installed without the worker's packages",
            "version": probe["pgai"],
            "missing": probe["missing"],
            "hint": INSTALL_HINT,
        }
    return PgaiVenv(venv, probe["pgai"], probe["tiktoken_cache"], probe["versions"])


def run_cli(venv: PgaiVenv, args: list[str], cwd: Path, timeout: float) -> None:
    done = subprocess.run(
        [venv.cli, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=venv.env(),
        cwd=cwd,  # pgai loads a .env file from its working directory: one without any
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise RuntimeError(f"pgai {args[0]} exited with {done.returncode}: {output}")


def create_vectorizer(conn: psycopg.Connection[Any], base_url: str) -> tuple[int, str]:
    """The vectorizer; its id and its destination table (schema-qualified, quoted)."""
    params = {
        "template": TEMPLATE,
        "model": MODEL,
        "dimensions": DIMENSIONS,
        "base_url": base_url,
        "batch": BATCH_SIZE,
        "concurrency": CONCURRENCY,
    }
    row = conn.execute(CREATE_VECTORIZER, params).fetchone()
    assert row is not None
    where = conn.execute(DESTINATION, (row[0],)).fetchone()
    assert where is not None
    table = sql.Identifier(where[0], where[1]).as_string(conn)
    return int(row[0]), table


def count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def index_methods(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """The access methods of the destination's indexes (btree keys only: no HNSW)."""
    rows = conn.execute(
        "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = %s::regclass",
        (table,),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


@contextlib.contextmanager
def worker_process(venv: PgaiVenv, dsn: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`pgai vectorizer worker --once` (it exits when the queue is empty), output to `log`;
    stopped by its own pid if it is still running afterwards."""
    command = [venv.cli, "vectorizer", "worker", "-d", dsn, "--once", "--log-level", "info"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=venv.env(), cwd=log.parent
        )
        try:
            yield process
        finally:
            stop_process(process)


def check_alive(process: subprocess.Popen[bytes], log: Path) -> None:
    """Fail at once if the worker exited with an error (a clean exit is checked by count)."""
    code = process.poll()
    if code not in {None, 0}:
        raise RuntimeError(f"pgai's worker exited with {code}: {log.read_text()[-2000:]}")


@dataclass(frozen=True)
class Work:
    """What the worker is to do: embed `rows` queued rows of the database at `dsn` into
    `table`."""

    dsn: str
    table: str
    rows: int


def timed_worker(
    venv: PgaiVenv, work: Work, conn: psycopg.Connection[Any], log: Path, timeout: float
) -> dict[str, Any]:
    """Start the worker; time until it registered (its start-up) and until every row has a
    vector."""
    rows = work.rows
    embedded = f"SELECT count(*) FROM {work.table}"
    registered = "SELECT count(*) FROM ai.vectorizer_worker_process"
    with worker_process(venv, work.dsn, log) as process:
        started = time.perf_counter()

        def ready() -> bool:
            check_alive(process, log)
            return count(conn, registered) > 0

        poll(ready, timeout, "pgai's worker to register", interval=0.01)
        startup = time.perf_counter() - started

        def done() -> bool:
            check_alive(process, log)
            return count(conn, embedded) >= rows

        poll(done, timeout, f"pgai's worker to embed {rows} rows", interval=0.01)
        seconds = time.perf_counter() - started
        process.wait(timeout)  # --once: it exits when the queue is empty
    vectors = count(conn, embedded)
    if vectors != rows:
        raise AssertionError(f"pgai's destination holds {vectors} vectors for {rows} rows")
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": rate(rows, seconds),
        "startup_seconds": round(startup, 3),
        "rows_per_s_excluding_startup": rate(rows, seconds - startup),
        "worker_exit_code": process.returncode,
    }


def settings(venv: PgaiVenv) -> dict[str, Any]:
    return {
        "model": MODEL,
        "dimensions": DIMENSIONS,
        "batch_size": BATCH_SIZE,
        "concurrency": CONCURRENCY,
        "chunking": "none",
        "formatting": TEMPLATE,
        "indexing": "none",
        "scheduling": "none (the worker runs once, --once)",
        "insert_batch": INSERT_BATCH,
        "tiktoken_cache": venv.tiktoken_cache,
        "packages": venv.versions,
    }


def measure(venv: PgaiVenv, ctx: Context) -> dict[str, Any]:
    """The whole run on a fresh database, on the rows of wal2vec's no-index run; what the
    table's row c reports."""
    server, base_url, articles = ctx.server, ctx.base_url, ctx.articles
    workdir, timeout = ctx.workdir / "pgai", ctx.sizes.timeout
    workdir.mkdir(parents=True, exist_ok=True)
    texts = [f"{row[1]}\n\n{row[2]}" for row in articles[:BATCH_SIZE]]
    # What the endpoint serves in pgai's encoding, from as many clients as pgai's concurrency:
    # the figure below should stay well under it.
    ceiling = measure_ceiling(base_url, texts, BATCH_SIZE, CONCURRENCY, 3.0, "float")
    with fresh_database(server) as database:
        dsn = server.dsn(database)
        run_cli(venv, ["install", "-d", dsn], workdir, timeout)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(ARTICLES_DDL)
            vectorizer_id, table = create_vectorizer(conn, base_url)
            started = time.perf_counter()
            insert_rows(conn, articles, INSERT_BATCH)
            inserted = time.perf_counter() - started
            work = Work(dsn, table, len(articles))
            run = timed_worker(venv, work, conn, workdir / "worker.log", timeout)
            indexes = index_methods(conn, table)
    return {
        "status": "run",
        "version": venv.version,
        **run,
        "insert_seconds_with_pgai_trigger": round(inserted, 3),
        "vectorizer_id": vectorizer_id,
        "destination": table,
        "destination_index_methods": indexes,
        "settings": settings(venv),
        "endpoint_ceiling_float": ceiling,
    }
