"""Per-table `max_latency`: an urgent table's change overtakes a bulk load of another table."""

from __future__ import annotations

import time

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import Deployment, Table, assert_in_step, wait_until

BULK_ROWS = 100_000


def count(deployment: Deployment, source_table: str, source_id: str | None = None) -> int:
    query = "SELECT count(*) FROM cdc_embeddings WHERE source_table = %s"
    params: tuple[str, ...] = (source_table,)
    if source_id is not None:
        query += " AND source_id = %s"
        params += (source_id,)
    with deployment.connect() as conn:
        row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0


def test_an_urgent_change_lands_within_its_bound_while_a_bulk_load_streams(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    urgent_bound = 1.0
    deployment.execute("CREATE TABLE comments (id bigint PRIMARY KEY, body text)")
    deployment.tables = [
        Table("public.articles", ["title", "body"], options={"max_latency": urgent_bound}),
        Table("public.comments", ["body"], options={"max_latency": 2.0}),
    ]
    # Room for the whole load, so the reader reaches the urgent change behind it.
    deployment.extra = {"buffer": {"max_rows": 2 * BULK_ROWS}}
    process = deployment.start()
    try:
        deployment.wait_ready()
        with deployment.connect() as conn:
            for start in range(0, BULK_ROWS, 1000):
                conn.execute(
                    "INSERT INTO comments (id, body) "
                    "SELECT g, 'comment number ' || g FROM generate_series(%s::int, %s::int) g",
                    (start + 1, start + 1000),
                )
        wait_until(lambda: count(deployment, "public.comments") > 0, 120, "the bulk load begun")

        committed = time.monotonic()
        deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Urgent', 'now')")
        wait_until(lambda: count(deployment, "public.articles", "1"), 30, "the urgent row")
        landed_after = time.monotonic() - committed
        comments_then = count(deployment, "public.comments")

        # Its bound, plus one slice of the bulk batch and its own write.
        assert landed_after < urgent_bound + 1.5, f"landed after {landed_after:.2f}s"
        assert comments_then < BULK_ROWS, "the bulk load was over: nothing was overtaken"
        deployment.wait_caught_up(timeout=300)
        assert assert_in_step(deployment) == BULK_ROWS + 1
    finally:
        assert process.stop() == 0, process.output
