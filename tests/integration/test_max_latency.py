"""Per-table `max_latency`: an urgent table's change overtakes a bulk load of another table.

Asserted as an ordering, not a duration: the urgent row's vector is in the sink while the bulk
table's vectors are not yet all written. Without slicing the urgent change, committed after
the whole load, could only land with or after the load's last rows. (How fast it lands is a
benchmark's business: a test on two loaded cores cannot hold a wall-clock bound.)
"""

from __future__ import annotations

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import Deployment, Table, assert_in_step, wait_until

BULK_ROWS = 20_000


def count(deployment: Deployment, source_table: str) -> int:
    with deployment.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM cdc_embeddings WHERE source_table = %s", (source_table,)
        ).fetchone()
        return int(row[0]) if row else 0


def comments_when_urgent_landed(deployment: Deployment) -> tuple[int] | None:
    """The bulk table's vector count, read in the same snapshot as the urgent row's vector;
    None while that vector is not there."""
    with deployment.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE source_table = 'public.comments'), "
            "count(*) FILTER (WHERE source_table = 'public.articles' AND source_id = '1') "
            "FROM cdc_embeddings"
        ).fetchone()
    assert row is not None
    comments, urgent = row
    return (int(comments),) if urgent else None


def test_an_urgent_change_overtakes_a_bulk_load_of_another_table(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.execute("CREATE TABLE comments (id bigint PRIMARY KEY, body text)")
    deployment.tables = [
        Table("public.articles", ["title", "body"], options={"max_latency": 1.0}),
        Table("public.comments", ["body"], options={"max_latency": 2.0}),
    ]
    # Room for the whole load, so the reader reaches the urgent change behind it.
    deployment.extra = {"buffer": {"max_rows": 2 * BULK_ROWS}}
    process = deployment.start()
    deployment.wait_ready()
    with deployment.connect() as conn:
        for start in range(0, BULK_ROWS, 1000):
            conn.execute(
                "INSERT INTO comments (id, body) "
                "SELECT g, 'comment number ' || g FROM generate_series(%s::int, %s::int) g",
                (start + 1, start + 1000),
            )
    # The bulk load is being embedded: the urgent change, written now, is not in its batch.
    wait_until(lambda: endpoint.requests > 0, what="the bulk load's first embedding request")

    deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Urgent', 'now')")
    # A long deadline: without slicing the urgent row lands after the whole load, and the
    # assertion below, not this wait, is what should say so.
    (comments_then,) = wait_until(
        lambda: comments_when_urgent_landed(deployment), 600, "the urgent row's vector"
    )
    assert comments_then < BULK_ROWS, "the urgent row landed only after the whole bulk load"
    deployment.wait_caught_up(timeout=600)
    assert assert_in_step(deployment) == BULK_ROWS + 1
    assert process.stop() == 0, process.output
