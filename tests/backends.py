"""The servers a deployment under test runs on: where its content tables are, where its
vectors go, and which output plugin decodes the source's WAL.

- `pg18`: the embedded PostgreSQL 18 holds both, decoded with pgoutput (the default for
  every test).
- `pg15-pgoutput`: the content tables on Debian's PostgreSQL 15 (`tests/pg15.py`), the vectors
  in a database of the test's own on the embedded 18 (`sink.dsn`); pgoutput.
- `pg15-wal2json`: the same, decoded with wal2json (`source.plugin: wal2json`).

A module runs its tests on every backend with `pytestmark = every_backend`; a test that cannot
apply to one skips it there (`pytest.skip`), saying exactly why.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import Deployment, Table
from tests.pg import PgServer, Server, unique_slot

PG18 = "pg18"
PG15_PGOUTPUT = "pg15-pgoutput"
PG15_WAL2JSON = "pg15-wal2json"
NAMES = (PG18, PG15_PGOUTPUT, PG15_WAL2JSON)

# Each test of a module (or one test) once per backend; the ids are the names.
every_backend = pytest.mark.parametrize("backend", NAMES, indirect=True)

ARTICLES_DDL = """
CREATE TABLE articles (
    id bigint PRIMARY KEY,
    title text,
    body text,
    author_id int,
    views int NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True)
class Backend:
    name: str
    source: Server
    sink: PgServer
    plugin: str  # source.plugin

    @property
    def split(self) -> bool:
        """Whether the vectors live on another server than the content tables."""
        return self.source is not self.sink


@contextmanager
def deployment_on(backend: Backend, base_url: str, workdir: Path) -> Iterator[Deployment]:
    """A deployment on `backend`: an `articles` table in a database of its own on the source,
    the sink's database with pgvector (the same one unless the backend is split), and a config
    streaming `articles`. On the way out every `cdc run` it started is stopped (SIGTERM, then
    SIGKILL after a grace period), then its databases are dropped with their slots."""
    source_db = backend.source.create_database()
    sink_db = backend.sink.create_database() if backend.split else source_db
    try:
        backend.sink.execute("CREATE EXTENSION IF NOT EXISTS vector", database=sink_db)
        dep = Deployment(
            dsn=backend.source.dsn(source_db),
            sink_dsn=backend.sink.dsn(sink_db) if backend.split else None,
            plugin=backend.plugin,
            slot=unique_slot(),
            base_url=base_url,
            workdir=workdir,
            tables=[Table("public.articles", ["title", "body"], ["author_id"])],
        )
        try:
            dep.execute(ARTICLES_DDL)
            yield dep
        finally:
            dep.stop_all()
    finally:
        backend.source.drop_database(source_db)
        if backend.split:
            backend.sink.drop_database(sink_db)
