"""Pipelined writes: the next batch is embedded while the one before it is written, the sink
still commits in order, and a row in the write in flight is never planned against what the
sink held before that write.

A test transaction holds the sink row of article 1 (`SELECT ... FOR UPDATE`), so the write of
a batch that changes it waits, visibly, for as long as the test wants.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg
import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import CdcProcess, Deployment, assert_in_step, free_port, scrape, wait_until

TABLE = "public.articles"


def text(title: str, body: str) -> str:
    return f"{title}\n\n{body}"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def streaming(deployment: Deployment, port: int) -> Iterator[CdcProcess]:
    deployment.extra = {"metrics": {"port": port}}
    deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'first', 'one')")
    process = deployment.start()
    deployment.wait_ready()
    yield process
    assert process.stop() == 0, process.output


@contextmanager
def holding_row_one(deployment: Deployment) -> Iterator[psycopg.Connection[Any]]:
    """A sink transaction holding article 1's row: a write that changes it waits."""
    with deployment.connect_sink() as conn:
        conn.execute("BEGIN")
        held = conn.execute(
            "SELECT 1 FROM cdc_embeddings WHERE source_table = %s AND source_id = '1' FOR UPDATE",
            (TABLE,),
        ).fetchall()
        assert held, "article 1 is in the sink"
        yield conn
        conn.execute("ROLLBACK")


def stored_content(deployment: Deployment, source_id: str) -> str | None:
    with deployment.connect_sink() as conn:
        row = conn.execute(
            "SELECT content FROM cdc_embeddings WHERE source_table = %s AND source_id = %s",
            (TABLE, source_id),
        ).fetchone()
    return None if row is None else str(row[0])


def received(endpoint: FakeOpenAIServer, wanted: str, process: CdcProcess) -> bool:
    process.assert_running()
    return wanted in endpoint.inputs


def test_the_next_batch_is_embedded_while_the_one_before_it_is_written(
    deployment: Deployment, endpoint: FakeOpenAIServer, streaming: CdcProcess
) -> None:
    with holding_row_one(deployment):
        deployment.execute("UPDATE articles SET title = 'edited' WHERE id = 1")
        edited = text("edited", "one")
        wait_until(lambda: received(endpoint, edited, streaming), what="the edit embedded")
        deployment.execute("INSERT INTO articles (id, title, body) VALUES (2, 'second', 'two')")
        second = text("second", "two")
        wait_until(lambda: received(endpoint, second, streaming), what="the insert embedded")
        # Embedded beside the write held back; written after it, in commit order.
        assert stored_content(deployment, "1") == text("first", "one")
        assert stored_content(deployment, "2") is None
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 2


def test_a_row_in_the_write_in_flight_is_planned_after_that_write_commits(
    deployment: Deployment, endpoint: FakeOpenAIServer, streaming: CdcProcess, port: int
) -> None:
    """Back to what the sink held before the write in flight: planned against the sink as it
    stood, the change would look unchanged and be dropped, leaving the edit behind."""
    first = text("first", "one")
    embedded_before = endpoint.inputs.count(first)
    updates = partial(scrape, port, "cdc_changes_total", f'op="update",table="{TABLE}"')
    batches = partial(scrape, port, "cdc_batch_rows_count")
    with holding_row_one(deployment):
        deployment.execute("UPDATE articles SET title = 'edited' WHERE id = 1")
        edited = text("edited", "one")
        wait_until(lambda: received(endpoint, edited, streaming), what="the edit embedded")
        prepared = batches()
        deployment.execute("UPDATE articles SET title = 'first' WHERE id = 1")
        wait_until(lambda: (updates() or 0) >= 2, what="the second update read")
        # Not prepared beside the edit's write (that would read the sink from before it).
        assert not happens_within(2.0, lambda: (batches() or 0) > (prepared or 0))
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 1
    assert stored_content(deployment, "1") == first
    # Planned after the edit committed: the sink then held the edit, so it was embedded again.
    assert endpoint.inputs.count(first) == embedded_before + 1


def happens_within(seconds: float, condition: Callable[[], bool]) -> bool:
    """Whether `condition` holds within `seconds` (for what must not happen: a bounded look,
    which a loaded machine can only make shorter in effect, never wrong)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
