"""Concurrent embedding requests under `cdc run`: the sink still ends in step, in commit order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import Deployment, assert_in_step


@contextmanager
def checkpoints_watched(deployment: Deployment) -> Iterator[list[int]]:
    """Every checkpoint LSN the sink's state row shows while the block runs, in order."""
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(deployment.dsn, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(
                    "SELECT checkpoint_lsn - '0/0'::pg_lsn FROM cdc_state WHERE slot = %s",
                    (deployment.slot,),
                ).fetchone()
                if row is not None and row[0] is not None:
                    seen.append(int(row[0]))
                done.wait(0.005)  # sampling period of the watcher, not a synchronisation

    watcher = threading.Thread(target=watch, name="checkpoint-watcher")
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join(10)


def test_requests_in_flight_at_varying_latencies_keep_the_sink_in_step(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.extra = {"embedding": {"batch_size": 4, "concurrency": 4}}
    endpoint.latency = 0.01
    endpoint.latency_spread = 0.08  # requests overtake each other
    process = deployment.start()
    try:
        deployment.wait_ready()
        with checkpoints_watched(deployment) as checkpoints:
            for round_ in range(12):
                base = round_ * 25
                deployment.execute(
                    "INSERT INTO articles (id, title, body) "
                    "SELECT g, 'title ' || g, 'round ' || %s::int || ' body ' || g "
                    "FROM generate_series(%s::int, %s::int) g",
                    (round_, base, base + 24),
                )
                # Edits and deletes of rows whose insert may still be in flight.
                deployment.execute("UPDATE articles SET body = body || ' edited' WHERE id % 3 = 0")
                deployment.execute(
                    "DELETE FROM articles WHERE id %% 7 = 0 AND id > %s::int", (base,)
                )
            deployment.wait_caught_up(timeout=120)
        assert assert_in_step(deployment) > 200
        assert checkpoints == sorted(checkpoints), "the checkpoint went backwards"
        assert len(set(checkpoints)) > 1
        assert 2 <= endpoint.max_in_flight <= 4
        assert not endpoint.violations
    finally:
        assert process.stop() == 0, process.output
