"""Parallel sink writers (`sink.writers`): each batch split by key over several sink sessions,
each committing with its own position; kill -9 anywhere loses nothing and leaves nothing stale.

- kill -9 at random points of the mixed workload with three writers;
- a crash between two writers' commits (one held back by a row lock the test takes): the
  restart skips what the writer ahead holds and applies the rest;
- a large transaction, applied in parts by two writers, killed midway;
- the number of writers changed between runs;
- truncates and resyncs, applied by all writers together.
"""

from __future__ import annotations

import json
import random
from functools import partial
from typing import Any

from cdc.partitions import partition_of
from cdc.replication.lsn import Lsn
from tests.fakes.openai_server import FakeOpenAIServer, embed_text
from tests.harness import (
    DIMENSIONS,
    MODEL,
    CdcProcess,
    Deployment,
    Workload,
    assert_in_step,
    ends_in_step,
    free_port,
    scrape,
    wait_until,
)

TABLE = "public.articles"
KILLS = 3


def writer_positions(deployment: Deployment) -> list[Any] | None:
    with deployment.connect_sink() as conn:
        row = conn.execute(
            "SELECT writer_positions FROM cdc_state WHERE slot = %s", (deployment.slot,)
        ).fetchone()
    return None if row is None else row[0]


def ids_of_writer(writer: int, writers: int, count: int, start: int = 1) -> list[int]:
    ids, candidate = [], start
    while len(ids) < count:
        if partition_of(TABLE, str(candidate), writers) == writer:
            ids.append(candidate)
        candidate += 1
    return ids


def test_kill_9_at_random_points_with_three_writers_loses_nothing(
    deployment: Deployment, endpoint: FakeOpenAIServer, seed: int
) -> None:
    rng = random.Random(seed)
    deployment.extra = {"sink": {"writers": 3}}
    endpoint.latency = 0.01
    process = deployment.start()
    deployment.wait_ready()
    workload = Workload(deployment, seed=seed)
    workload.start()
    try:
        for kill in range(KILLS):
            due = endpoint.requests + rng.randrange(1, 10)

            def reached(due: int = due, process: CdcProcess = process) -> bool:
                process.assert_running()
                return endpoint.requests >= due

            wait_until(reached, what=f"kill {kill}: {due} requests")
            process.kill()
            process = deployment.start()
        requests = endpoint.requests
        wait_until(lambda: endpoint.requests > requests, what="the last start at work")
    finally:
        workload.stop()
    assert workload.transactions > KILLS, workload
    ends_in_step(deployment, process)
    positions = writer_positions(deployment)
    assert positions is not None and len(positions) == 3


def test_a_crash_between_two_writers_commits_resumes_each_where_it_stands(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    port = free_port()
    deployment.extra = {"sink": {"writers": 2}, "metrics": {"port": port}}
    process = deployment.start()
    deployment.wait_ready()
    ahead = ids_of_writer(0, 2, 10)
    [held_back] = ids_of_writer(1, 2, 1)
    with deployment.connect_sink() as blocker:
        # An uncommitted row with writer 1's key: its upsert waits for this transaction,
        # while writer 0 commits its share and its position.
        blocker.execute("BEGIN")
        blocker.execute(
            "INSERT INTO cdc_embeddings (source_table, source_id, chunk, content, "
            "content_hash, model, embedding) VALUES (%s, %s, 0, 'x', 'x', %s, %s::vector)",
            (TABLE, str(held_back), MODEL, json.dumps(embed_text("x", DIMENSIONS))),
        )
        deployment.execute(
            "INSERT INTO articles (id, title, body) SELECT g, 'title ' || g, 'body ' || g "
            "FROM unnest(%s::bigint[]) g",
            ([*ahead, held_back],),
        )
        wait_until(lambda: first_apart(deployment), what="writer 0 ahead of writer 1")
        process.kill()
        blocker.execute("ROLLBACK")
    assert {int(r["source_id"]) for r in deployment.sink_rows()} == set(ahead)
    embedded = len(endpoint.inputs)

    process = deployment.start()
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == len(ahead) + 1
    # Only writer 1's row came through again: writer 0's rows were skipped before the
    # applier (none was even looked up and found unchanged).
    assert endpoint.inputs[embedded:] == [f"title {held_back}\n\nbody {held_back}"]
    skipped = scrape(port, "cdc_embeddings_skipped_total", f'reason="unchanged",table="{TABLE}"')
    assert skipped == 0
    positions = writer_positions(deployment)
    assert positions is not None and positions[0] == positions[1]
    assert process.stop() == 0, process.output


def first_apart(deployment: Deployment) -> bool:
    positions = writer_positions(deployment)
    if not positions:
        return False
    return Lsn.parse(positions[0][0]) > Lsn.parse(positions[1][0])


def test_a_large_transaction_applied_in_parts_by_two_writers_survives_kill_9(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    rows, max_rows = 3000, 400
    deployment.extra = {
        "sink": {"writers": 2},
        "buffer": {"max_rows": max_rows},
        "embedding": {"concurrency": 1},
    }
    first = deployment.start()
    deployment.wait_ready()
    endpoint.latency = 0.3
    deployment.execute(
        "INSERT INTO articles (id, title, body) "
        f"SELECT g, 'large ' || g, 'row ' || g FROM generate_series(1, {rows}) g"
    )
    wait_until(partial(inside_a_transaction, deployment), 120, "positions inside it")
    landed = len(deployment.sink_rows())
    assert 0 < landed < rows
    first.kill()
    endpoint.latency = 0.0
    embedded = len(endpoint.inputs)
    second = deployment.start()
    deployment.wait_caught_up(timeout=120)
    assert assert_in_step(deployment) == rows
    # What the writers held was not embedded again: at most the parts in flight at the kill.
    assert len(endpoint.inputs) - embedded <= rows - landed + max_rows
    positions = writer_positions(deployment)
    assert positions is not None and all(p[1] is None for p in positions)
    assert second.stop() == 0, second.output


def inside_a_transaction(deployment: Deployment) -> bool:
    positions = writer_positions(deployment) or []
    return any(p[1] is not None for p in positions)


def test_changing_the_number_of_writers_between_runs(
    deployment: Deployment, endpoint: FakeOpenAIServer, seed: int
) -> None:
    workload = Workload(deployment, seed=seed, ids=200)
    workload.start()
    try:
        for writers, shape in ((3, 3), (1, None), (2, 2)):
            deployment.extra = {"sink": {"writers": writers}}
            process = deployment.start()
            deployment.wait_ready()
            done = workload.transactions
            wait_until(lambda done=done: workload.transactions > done + 30, what="writes")
            deployment.wait_caught_up()
            positions = writer_positions(deployment)
            assert (len(positions) if positions else None) == shape
            assert process.stop() == 0, process.output
    finally:
        workload.stop()
    process = deployment.start()
    ends_in_step(deployment, process)


def test_truncates_and_a_resync_with_three_writers(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.extra = {
        "sink": {"writers": 3},
        "buffer": {"max_age": 0.5},
        "snapshot": {"chunk_rows": 10, "poll_interval": 0.2},
    }
    process = deployment.start()
    deployment.wait_ready()
    insert = (
        "INSERT INTO articles (id, title, body) SELECT g, 'title ' || g || %s, 'body ' || g "
        "FROM generate_series(1, 60) g"
    )
    deployment.execute(insert, (" one",))
    # In one batch (max_age 0.5 s): a truncate, then rows of every writer's partition again.
    with deployment.connect() as conn:
        conn.execute("TRUNCATE articles")
        conn.execute(insert, (" two",))
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 60
    # A resync's reads land with the stream's batches: applied by all writers together.
    deployment.execute_sink("DELETE FROM cdc_embeddings WHERE source_id IN ('3', '4', '5')")
    deployment.execute("UPDATE articles SET title = title || ' three' WHERE id % 2 = 0")
    result = deployment.cli("resync", "--table", TABLE, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resync complete" in result.stdout
    ends_in_step(deployment, process)
