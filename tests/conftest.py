"""Shared fixtures: one embedded PostgreSQL per test session (and, when a test needs it, one
PostgreSQL 15 as a source); per test, a database of its own, a fake OpenAI endpoint of its own,
and the `cdc` processes it started, all stopped at teardown."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg15
from tests.backends import PG15_WAL2JSON, PG18, Backend, deployment_on
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import DIMENSIONS, CdcProcess, Deployment
from tests.pg import PgServer, start_server


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    server = start_server(tmp_path_factory.mktemp("pg") / "data")
    yield server
    server.close()


@pytest.fixture(scope="session")
def pg15_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg15.Pg15Server]:
    """PostgreSQL 15, started the first time a test asks for it (skipped when it is not
    installed, unless WAL2VEC_REQUIRE_PG15=1)."""
    with pg15.serving(tmp_path_factory.mktemp("pg15")) as server:
        yield server


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """Where the deployment runs: `pg18` unless the test is parametrized with
    `tests.backends.every_backend`."""
    name = getattr(request, "param", PG18)
    sink: PgServer = request.getfixturevalue("pg_server")
    if name == PG18:
        return Backend(name, source=sink, sink=sink, plugin="pgoutput")
    plugin = "pgoutput"
    if name == PG15_WAL2JSON:
        plugin = "wal2json"
        reason = pg15.wal2json_missing()
        if reason is not None:
            pg15.unavailable(reason)
    return Backend(name, source=request.getfixturevalue("pg15_server"), sink=sink, plugin=plugin)


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


@pytest.fixture
def running(deployment: Deployment) -> Iterator[CdcProcess]:
    """`cdc run` on the deployment, past its snapshot; it must exit 0 on SIGTERM at the end."""
    process = deployment.start()
    deployment.wait_ready()
    yield process
    assert process.stop() == 0, process.output


@pytest.fixture
def deployment(
    backend: Backend, endpoint: FakeOpenAIServer, tmp_path: Path
) -> Iterator[Deployment]:
    """A database with an `articles` table and a wal2vec config streaming it, on `backend`
    (see `tests.backends.deployment_on`)."""
    with deployment_on(backend, endpoint.url, tmp_path) as dep:
        yield dep


@pytest.fixture
def seed() -> int:
    """A random seed for a test's random choices, printed so WAL2VEC_SEED=N replays it."""
    value = int(os.environ.get("WAL2VEC_SEED") or random.randrange(2**32))
    print(f"WAL2VEC_SEED={value}")  # shown with a failure's captured output
    return value
