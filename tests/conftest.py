"""Shared fixtures: one embedded PostgreSQL and one fake OpenAI endpoint per test session."""

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


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(dimensions=DIMENSIONS) as server:
        yield server


@pytest.fixture
def endpoint(openai_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The session's fake endpoint, reset before and after each test."""
    openai_server.reset()
    yield openai_server
    openai_server.reset()


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
    """A database with an `articles` table and a wal2vec config streaming it."""
    dep = Deployment(
        dsn=database,
        slot=unique_slot(),
        base_url=endpoint.url,
        workdir=tmp_path,
        tables=[Table("public.articles", ["title", "body"], ["author_id"])],
    )
    dep.execute(ARTICLES_DDL)
    yield dep
