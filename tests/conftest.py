"""Shared fixtures: one embedded PostgreSQL per test session; per test, a database of its own,
a fake OpenAI endpoint of its own, and the `cdc` processes it started, all stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import DIMENSIONS, CdcProcess, Deployment, Table
from tests.pg import PgServer, start_server, unique_slot


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    server = start_server(tmp_path_factory.mktemp("pg") / "data")
    yield server
    server.close()


@pytest.fixture
def endpoint() -> Iterator[FakeOpenAIServer]:
    """A fake endpoint of the test's own, on a port of its own, stopped at teardown.

    Never shared: a streamer a previous test left behind cannot answer into this test's counts.
    Starting one costs a socket and a thread (about a millisecond).
    """
    with FakeOpenAIServer(dimensions=DIMENSIONS) as server:
        yield server


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    name = pg_server.create_database()
    pg_server.execute("CREATE EXTENSION IF NOT EXISTS vector", database=name)
    yield pg_server.dsn(name)
    pg_server.drop_database(name)


ARTICLES_DDL = """
CREATE TABLE articles (
    id bigint PRIMARY KEY,
    title text,
    body text,
    author_id int,
    views int NOT NULL DEFAULT 0
)
"""


@pytest.fixture
def running(deployment: Deployment) -> Iterator[CdcProcess]:
    """`cdc run` on the deployment, past its snapshot; it must exit 0 on SIGTERM at the end."""
    process = deployment.start()
    deployment.wait_ready()
    yield process
    assert process.stop() == 0, process.output


@pytest.fixture
def deployment(database: str, endpoint: FakeOpenAIServer, tmp_path: Path) -> Iterator[Deployment]:
    """A database with an `articles` table and a wal2vec config streaming it.

    At teardown every `cdc run` it started is stopped (SIGTERM, then SIGKILL after a grace
    period), whatever the test asserted, so none outlives its test.
    """
    dep = Deployment(
        dsn=database,
        slot=unique_slot(),
        base_url=endpoint.url,
        workdir=tmp_path,
        tables=[Table("public.articles", ["title", "body"], ["author_id"])],
    )
    try:
        dep.execute(ARTICLES_DDL)
        yield dep
    finally:
        dep.stop_all()
