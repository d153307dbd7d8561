"""What production does to a streamer, each ending with the sink in step (`assert_in_step`).

- kill -9 at random points of a mixed workload, restarted each time;
- PostgreSQL (the source's server) restarted (`pg_ctl restart -m fast` and `-m immediate`)
  under `cdc run`;
- the embedding endpoint gone (connections refused, then 503) while writes go on;
- the slot lost (dropped by someone, or invalidated past `max_slot_wal_keep_size`) under
  `cdc run`: it exits 3 naming `cdc resync`, which then recovers.

The default is the short form CI runs (a few kills, an outage of a few seconds). WAL2VEC_SOAK=1
selects the long form: 20 kills and an endpoint gone for a minute. The random points come from
a seed printed with the test's output; WAL2VEC_SEED=N replays one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import socket
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest

from tests import pg15
from tests.backends import PG18, Backend, deployment_on, every_backend
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import (
    CdcProcess,
    Deployment,
    Workload,
    assert_in_step,
    ends_in_step,
    wait_until,
)
from tests.pg import PgServer, start_server

pytestmark = every_backend

SOAK = os.environ.get("WAL2VEC_SOAK") == "1"
KILLS = 20 if SOAK else 3
OUTAGE_SECONDS = 60.0 if SOAK else 4.0
# Injected failures "until reset()": far more requests than an outage sees.
UNTIL_RESET = 10_000


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A server of this module's own, so restarting it or changing its settings never
    disturbs another test's."""
    server = start_server(tmp_path_factory.mktemp("failure-modes-pg") / "data")
    yield server
    server.close()


@pytest.fixture(scope="module")
def own_pg15_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg15.Pg15Server]:
    """The same for the PostgreSQL 15 backends' source."""
    with pg15.serving(tmp_path_factory.mktemp("failure-modes-pg15")) as server:
        yield server


@pytest.fixture
def own_backend(backend: Backend, request: pytest.FixtureRequest) -> Backend:
    """The test's backend with its source on a server of this module's own (on pg18, the
    sink too; a PostgreSQL 15 source keeps the session's embedded server as its sink)."""
    if backend.name == PG18:
        own: PgServer = request.getfixturevalue("own_server")
        return dataclasses.replace(backend, source=own, sink=own)
    return dataclasses.replace(backend, source=request.getfixturevalue("own_pg15_server"))


@pytest.fixture
def own_deployment(
    own_backend: Backend, endpoint: FakeOpenAIServer, tmp_path: Path
) -> Iterator[Deployment]:
    """The `deployment` fixture's setup, on this module's own source server."""
    with deployment_on(own_backend, endpoint.url, tmp_path) as dep:
        yield dep


def writes_after(workload: Workload, count: int = 20) -> None:
    """Wait for `count` more of the workload's transactions than it has committed now."""
    written = workload.transactions
    wait_until(lambda: workload.transactions >= written + count, what=f"{count} more writes")


# -- kill -9 ----------------------------------------------------------------------------------


def reached(endpoint: FakeOpenAIServer, requests: int, process: CdcProcess) -> bool:
    """Whether the endpoint has seen `requests` requests; raises if `process` exited."""
    process.assert_running()
    return endpoint.requests >= requests


def test_kill_9_at_random_points_of_a_mixed_workload_loses_nothing_and_leaves_nothing_stale(
    deployment: Deployment, endpoint: FakeOpenAIServer, seed: int
) -> None:
    rng = random.Random(seed)
    endpoint.latency = 0.01
    process = deployment.start()
    deployment.wait_ready()
    workload = Workload(deployment, seed=seed)
    workload.start()
    try:
        for kill in range(KILLS):
            # A random point: after a random number of embedding requests of this process
            # (none: during its start), at a random moment of its work.
            due = endpoint.requests + rng.randrange(8)
            wait_until(partial(reached, endpoint, due, process), what=f"kill {kill}: {due}")
            process.kill()
            process = deployment.start()
        # The last one streams the rest of the workload, then the backlog.
        requests = endpoint.requests
        wait_until(lambda: endpoint.requests > requests, what="the last start at work")
    finally:
        workload.stop()
    assert workload.transactions > KILLS, workload
    ends_in_step(deployment, process)


# -- PostgreSQL restarted ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_under_cdc_run_is_reconnected_to_and_ends_in_step(
    own_backend: Backend, own_deployment: Deployment, seed: int, mode: str
) -> None:
    deployment = own_deployment
    process = deployment.start()
    deployment.wait_ready()
    workload = Workload(deployment, seed=seed)
    workload.start()
    try:
        for _ in range(2):
            wait_until(lambda: workload.transactions > 20, what="writes before")
            deployment.wait_caught_up()  # streaming, with a confirmed position to come back to
            reconnects = workload.reconnects
            own_backend.source.restart_with(mode)
            process.assert_running()
            # The writer notices the restart too, and goes on writing after it.
            writes_after(workload)
            assert workload.reconnects > reconnects, workload
    finally:
        workload.stop()
    ends_in_step(deployment, process)
    assert "starting again" in process.output


# -- the embedding endpoint gone --------------------------------------------------------------


def refusing(port: int) -> socket.socket:
    """Hold `port` without listening: connections are refused, and the port stays ours."""
    placeholder = socket.socket()
    placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    placeholder.bind(("127.0.0.1", port))
    return placeholder


def test_the_endpoint_gone_for_a_while_delays_vectors_and_loses_none(
    deployment: Deployment, endpoint: FakeOpenAIServer, seed: int
) -> None:
    process = deployment.start()
    deployment.wait_ready()
    workload = Workload(deployment, seed=seed)
    workload.start()
    back: FakeOpenAIServer | None = None
    try:
        try:
            wait_until(lambda: len(deployment.sink_rows()) > 20, what="some vectors written")
            # Half the outage refusing connections, at least until the streamer gave up a
            # session (its retries outlasted)...
            endpoint.stop()
            with contextlib.closing(refusing(endpoint.port)):
                gone = time.monotonic()
                wait_until(
                    lambda: (
                        "starting again" in process.output
                        and time.monotonic() - gone >= OUTAGE_SECONDS / 2
                    ),
                    timeout=OUTAGE_SECONDS + 120,
                    what="the streamer to give up a session while the endpoint is gone",
                )
            # ...then half answering 503 to everything...
            back = FakeOpenAIServer(dimensions=endpoint.default_dimensions, port=endpoint.port)
            back.fail_next(UNTIL_RESET, status=503)
            back.start()
            unavailable = time.monotonic()
            wait_until(
                lambda: (
                    back is not None
                    and back.requests > 0
                    and time.monotonic() - unavailable >= OUTAGE_SECONDS / 2
                ),
                timeout=OUTAGE_SECONDS + 120,
                what="the streamer to meet the 503s",
            )
            process.assert_running()
            back.reset()  # ...then serving again.
            writes_after(workload)
        finally:
            workload.stop()
        ends_in_step(deployment, process)
    finally:
        if back is not None:
            back.stop()


# -- the slot lost ----------------------------------------------------------------------------


def drop_slot(deployment: Deployment) -> bool:
    """Someone drops the slot: end the walsender holding it, then drop it (False while the
    streamer got it back first)."""
    with deployment.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = %s AND active_pid IS NOT NULL",
            (deployment.slot,),
        )
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (deployment.slot,))
        except psycopg.errors.ObjectInUse:
            return False
    return True


def invalidate_slot(deployment: Deployment, endpoint: FakeOpenAIServer) -> None:
    """Hold the streamer's position back (every embedding request fails, so it confirms
    nothing new) and write WAL past max_slot_wal_keep_size until the server gives the slot up,
    ending the walsender that held it."""
    endpoint.fail_next(UNTIL_RESET, status=503)
    deployment.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    deployment.execute("SELECT pg_reload_conf()")

    try:
        wait_until(deployment.push_wal_past_the_slot, what="the slot to be invalidated")
    finally:
        deployment.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        deployment.execute("SELECT pg_reload_conf()")
        endpoint.reset()


@pytest.mark.parametrize("how", ["dropped", "invalidated"])
def test_a_slot_lost_under_cdc_run_exits_3_naming_resync_which_recovers(
    own_deployment: Deployment, endpoint: FakeOpenAIServer, seed: int, how: str
) -> None:
    deployment = own_deployment
    process = deployment.start()
    deployment.wait_ready()
    workload = Workload(deployment, seed=seed)
    workload.start()
    try:
        wait_until(lambda: workload.transactions > 50, what="writes before")
        deployment.wait_caught_up()
        if how == "dropped":
            wait_until(lambda: drop_slot(deployment), what="the slot dropped")
        else:
            invalidate_slot(deployment, endpoint)
        # Changes go on while the slot is gone: only a resync can bring them in.
        writes_after(workload)
        wait_until(lambda: process.process.poll() is not None, what="cdc run to exit")
    finally:
        workload.stop()
    assert process.process.returncode == 3, process.output
    assert "cdc resync" in process.output, process.output
    status = deployment.cli("status")
    assert status.returncode == 1, status.stdout
    resync = deployment.cli("resync", timeout=300)
    assert resync.returncode == 0, resync.stderr
    assert_in_step(deployment)
    fresh = deployment.start()
    deployment.execute("UPDATE articles SET title = 'after the resync' WHERE id IN (1, 2, 3)")
    ends_in_step(deployment, fresh)
