"""Several streamers on one database: disjoint tables, each with its own slot and publication,
writing to one shared sink table or each to its own.

Every operator command of one streamer (resync whole and `--table`, verify, status, dead
letters, teardown, a model rebuild) and its TRUNCATE handling must keep to its own slot and
tables, while the other streams on beside it.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import (
    Deployment,
    Table,
    assert_in_step,
    free_port,
    scrape,
    wait_until,
)
from tests.pg import unique_slot

ROWS = 40
ARTICLES = "public.articles"
FAQS = "public.faqs"
DDL = """
CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text, author_id int);
CREATE TABLE faqs (id bigint PRIMARY KEY, question text, answer text);
"""
# Rows whose content the fake endpoint rejects for good: one dead letter per streamer.
POISON = "POISON"
POISONED = {ARTICLES: "1001", FAQS: "2001"}


class Writer(threading.Thread):
    """Edits, deletes and inserts rows of one table (never its poisoned row) until halted."""

    def __init__(self, dsn: str, table: str, column: str, seed: int) -> None:
        super().__init__(daemon=True, name=f"writer-{table}")
        self.dsn, self.table, self.column = dsn, table, column
        self.halt = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None
        self._random = random.Random(seed)

    def run(self) -> None:
        table, column, rng = self.table, self.column, self._random
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.halt.is_set():
                    row, action = rng.randint(1, ROWS * 2), rng.random()
                    if action < 0.6:
                        conn.execute(
                            f"UPDATE {table} SET {column} = %s WHERE id = %s",
                            (f"edited {self.writes} of {row}", row),
                        )
                    elif action < 0.8:
                        conn.execute(f"DELETE FROM {table} WHERE id = %s", (row,))
                    else:
                        conn.execute(
                            f"INSERT INTO {table} (id, {column}) VALUES (%s, %s) ON CONFLICT "
                            f"(id) DO UPDATE SET {column} = EXCLUDED.{column}",
                            (row, f"inserted {self.writes}"),
                        )
                    self.writes += 1
        except BaseException as error:  # raised by `stop` in the test's thread
            self.error = error

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
        assert not self.is_alive(), f"{self.name} did not stop"
        assert self.error is None, self.error


class Pair:
    """Streamer A (articles) and streamer B (faqs) on one database, with their sink tables."""

    def __init__(self, a: Deployment, b: Deployment, a_sink: str, b_sink: str) -> None:
        self.a, self.b = a, b
        self.sink_of = {id(a): a_sink, id(b): b_sink}
        self.shared = a_sink == b_sink

    def in_step(self, deployment: Deployment) -> int:
        return assert_in_step(deployment, self.sink_of[id(deployment)], own_rows_only=True)

    def both(self) -> tuple[Deployment, Deployment]:
        return self.a, self.b


@pytest.fixture(params=["shared-sink", "own-sinks"])
def pair(
    request: pytest.FixtureRequest, database: str, endpoint: FakeOpenAIServer, tmp_path: Path
) -> Iterator[Pair]:
    """Shared: both write to cdc_embeddings. Own sinks: B's table has `target: faq_vectors`."""
    shared = request.param == "shared-sink"
    b_sink = "cdc_embeddings" if shared else "faq_vectors"
    deployments = []
    for name, table in (
        ("a", Table(ARTICLES, ["title", "body"], ["author_id"])),
        ("b", Table(FAQS, ["question", "answer"], target=None if shared else b_sink)),
    ):
        workdir = tmp_path / name
        workdir.mkdir()
        deployment = Deployment(
            dsn=database, slot=unique_slot(), base_url=endpoint.url, workdir=workdir, tables=[table]
        )
        deployment.extra = {
            "snapshot": {"chunk_rows": 7, "poll_interval": 0.2},
            "metrics": {"port": free_port(), "poll_interval": 0.2},
        }
        deployments.append(deployment)
    a, b = deployments
    a.execute(DDL)
    try:
        yield Pair(a, b, "cdc_embeddings", b_sink)
    finally:
        for deployment in deployments:
            deployment.stop_all()


def fill(pair: Pair) -> None:
    pair.a.execute(
        "INSERT INTO articles (id, title, body, author_id) SELECT g, 'Title ' || g, "
        "'Body of article ' || g, g %% 5 FROM generate_series(1, %s) g",
        (ROWS,),
    )
    pair.a.execute(
        "INSERT INTO faqs (id, question, answer) SELECT g, 'Question ' || g || '?', "
        "'Answer ' || g FROM generate_series(1, %s) g",
        (ROWS,),
    )
    pair.a.execute(
        "INSERT INTO articles (id, title) VALUES (%s, %s)", (POISONED[ARTICLES], f"{POISON} a")
    )
    pair.a.execute(
        "INSERT INTO faqs (id, question) VALUES (%s, %s)", (POISONED[FAQS], f"{POISON} f")
    )


def cli_json(deployment: Deployment, *args: str) -> tuple[int, Any]:
    result = deployment.cli(*args, "--json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def own_table(deployment: Deployment) -> str:
    (table,) = deployment.tables
    return table.table


def dead_letter_attempts(deployment: Deployment) -> dict[str, int]:
    return {d["source_table"]: d["attempts"] for d in deployment.dead_letters()}


def assert_dead_letters_are_its_own(deployment: Deployment) -> None:
    table = own_table(deployment)
    code, listed = cli_json(deployment, "dead-letters", "list")
    assert code == 0
    assert [(d["source_table"], d["source_id"]) for d in listed] == [(table, POISONED[table])]


def assert_verify_and_status_are_its_own(deployment: Deployment) -> None:
    table = own_table(deployment)
    code, verified = cli_json(deployment, "verify")
    assert code == 0, verified
    assert list(verified["tables"]) == [table]
    assert verified["tables"][table]["dead_letters"] == 1
    assert verified["tables"][table]["orphans"] == 0

    code, status = cli_json(deployment, "status")
    assert code == 0, status
    assert status["slot"] == deployment.slot and status["slot_active"]
    assert list(status["vectors"]) == [table]
    assert status["dead_letters"] == 1, "another streamer's dead letters were counted"
    assert {p["table"] for p in status["snapshots"]} == {table}


def test_two_streamers_keep_to_their_own_slot_and_tables(
    pair: Pair, endpoint: FakeOpenAIServer
) -> None:
    a, b = pair.both()
    endpoint.reject_inputs_containing(POISON)
    fill(pair)
    a_run, b_run = a.start(), b.start()
    for deployment in pair.both():
        deployment.wait_ready()
    dead_letters_are_each_its_own(pair)
    resyncs_under_writes_on_both(pair, endpoint)
    for deployment in pair.both():
        assert_verify_and_status_are_its_own(deployment)
    truncate_reaches_only_its_streamer(pair)

    # Teardown of B (slot, publication, state) leaves A streaming from its own.
    assert b_run.stop() == 0, b_run.output
    torn = b.cli("teardown", "--all")
    assert torn.returncode == 0, torn.stderr
    a.execute("UPDATE articles SET title = 'after B left' WHERE id = 3")
    a.wait_caught_up()
    assert pair.in_step(a) > ROWS // 2
    with a.connect() as conn:
        slots = conn.execute("SELECT slot_name FROM pg_replication_slots ORDER BY 1").fetchall()
        publications = conn.execute("SELECT pubname FROM pg_publication ORDER BY 1").fetchall()
    assert [s[0] for s in slots] == [a.slot]
    assert [p[0] for p in publications] == [a.slot]
    assert a_run.stop() == 0, a_run.output
    rebuild_keeps_to_its_own_sink_table(pair)


def dead_letters_are_each_its_own(pair: Pair) -> None:
    """Each lists and retries only its own dead letters; the gauge counts only its own."""
    a, _ = pair.both()
    for deployment in pair.both():
        assert_dead_letters_are_its_own(deployment)
    code, retried = cli_json(a, "dead-letters", "retry")
    assert code == 1, retried  # still rejected
    assert retried == {ARTICLES: {"retried": 1, "resolved": 0, "failed": 1}}
    assert dead_letter_attempts(a) == {ARTICLES: 2, FAQS: 1}
    port = a.extra["metrics"]["port"]
    wait_until(
        lambda: scrape(port, "cdc_dead_letter_rows", f'table="{ARTICLES}"') == 1,
        what="A's cdc_dead_letter_rows gauge at 1",
    )
    assert scrape(port, "cdc_dead_letter_rows", f'table="{FAQS}"') is None


def resyncs_under_writes_on_both(pair: Pair, endpoint: FakeOpenAIServer) -> None:
    """Under writes on both tables: a per-table resync of A, then a whole resync of B (which
    drops and recreates B's slot and sweeps its tables' sink rows for orphans)."""
    a, b = pair.both()
    endpoint.latency = 0.01
    writers = [
        Writer(a.dsn, "articles", "body", seed=1),
        Writer(b.dsn, "faqs", "answer", seed=2),
    ]
    for writer in writers:
        writer.start()
    try:
        resynced = a.cli("resync", "--table", ARTICLES, timeout=240)
        assert resynced.returncode == 0, resynced.stderr
        assert "resync complete" in resynced.stdout
        resynced = b.cli("resync", timeout=240)
        assert resynced.returncode == 0, resynced.stderr
        assert "requested" in resynced.stdout and "resync complete" in resynced.stdout
    finally:
        for writer in writers:
            writer.stop()
    assert all(writer.writes > 20 for writer in writers), [w.writes for w in writers]
    endpoint.latency = 0.0
    for deployment in pair.both():
        deployment.wait_caught_up()
    assert pair.in_step(a) > ROWS // 2 and pair.in_step(b) > ROWS // 2


def truncate_reaches_only_its_streamer(pair: Pair) -> None:
    """TRUNCATE of B's table empties B's vectors and dead letters, nothing of A's."""
    a, b = pair.both()
    a.execute("TRUNCATE faqs")
    a.execute("INSERT INTO faqs (id, question) VALUES (1, 'after the truncate')")
    for deployment in pair.both():
        deployment.wait_caught_up()
    assert pair.in_step(b) == 1 and pair.in_step(a) > ROWS // 2
    # (The resyncs tried the poisoned rows again: their attempts rose, each its own.)
    assert set(dead_letter_attempts(a)) == {ARTICLES}


def rebuild_keeps_to_its_own_sink_table(pair: Pair) -> None:
    """B moves to another model. A rebuild replaces its sink tables whole: refused on the
    shared one (A's vectors would go), done on a table of B's own."""
    a, b = pair.both()
    b.extra["embedding"] = {"model": "text-embedding-3-large", "dimensions": 16}
    rebuilt = b.cli("resync", timeout=240)
    if pair.shared:
        assert rebuilt.returncode == 2, rebuilt.stdout + rebuilt.stderr
        assert ARTICLES in rebuilt.stderr and "sink table" in rebuilt.stderr
        assert "Traceback" not in rebuilt.stderr
    else:
        assert rebuilt.returncode == 0, rebuilt.stderr
        with b.connect_sink() as conn:
            stored = conn.execute(
                "SELECT count(*), min(vector_dims(embedding)) FROM faq_vectors"
            ).fetchone()
        assert stored == (1, 16)
    assert pair.in_step(a) > ROWS // 2
