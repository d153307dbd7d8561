"""`cdc resync`: full (slot reset), per table beside the stream (watermarks), model changes, and
a slot the server invalidated."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest

from tests.backends import every_backend
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import CdcProcess, Deployment, Table, assert_in_step, wait_until

pytestmark = every_backend

ROWS = 60


def fill(deployment: Deployment, rows: int = ROWS) -> None:
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) "
        "SELECT g, 'Title ' || g, 'Body of article ' || g, g %% 5 FROM generate_series(1, %s) g",
        (rows,),
    )


def embed_all(deployment: Deployment) -> None:
    """`cdc run` until the sink is in step, then stop it."""
    process = deployment.start()
    try:
        deployment.wait_caught_up()
    finally:
        assert process.stop() == 0, process.output
    assert_in_step(deployment)


def progress(deployment: Deployment) -> dict[str, Any] | None:
    with deployment.connect_sink() as conn:
        row = conn.execute(
            "SELECT kind, status, phase, rows_done FROM cdc_snapshots "
            "WHERE slot = %s AND source_table = 'public.articles'",
            (deployment.slot,),
        ).fetchone()
    if row is None:
        return None
    return dict(zip(["kind", "status", "phase", "rows_done"], row, strict=True))


def slot_restart_lsn(deployment: Deployment) -> str | None:
    with deployment.connect() as conn:
        row = conn.execute(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (deployment.slot,),
        ).fetchone()
    return None if row is None else str(row[0])


def slot_active(deployment: Deployment) -> bool:
    with deployment.connect() as conn:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (deployment.slot,)
        ).fetchone()
    return bool(row and row[0])


def test_full_resync_of_an_unchanged_corpus_makes_no_api_call_and_streaming_goes_on(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    fill(deployment)
    embed_all(deployment)
    before = slot_restart_lsn(deployment)
    # Drift behind wal2vec's back: a resync must mend it, and pay only for that.
    deployment.execute_sink("DELETE FROM cdc_embeddings WHERE source_id = '7'")
    deployment.execute_sink(
        "INSERT INTO cdc_embeddings (source_table, source_id, chunk, content, content_hash, "
        "model, embedding) SELECT source_table, 'gone', 0, content, content_hash, model, "
        "embedding FROM cdc_embeddings WHERE source_id = '1'"
    )
    endpoint.reset()
    result = deployment.cli("resync")
    assert result.returncode == 0, result.stderr
    assert "resync complete" in result.stdout
    assert endpoint.inputs == ["Title 7\n\nBody of article 7"]
    assert slot_restart_lsn(deployment) not in (None, before), "the slot was not recreated"
    assert_in_step(deployment)

    endpoint.reset()
    result = deployment.cli("resync")
    assert result.returncode == 0, result.stderr
    assert endpoint.requests == 0, "an unchanged corpus was embedded again"

    process = deployment.start()
    try:
        deployment.execute("UPDATE articles SET title = 'after the resync' WHERE id = 3")
        deployment.wait_caught_up()
        assert_in_step(deployment)
    finally:
        assert process.stop() == 0, process.output


def test_full_resync_requested_of_a_running_streamer(
    deployment: Deployment, endpoint: FakeOpenAIServer, running: CdcProcess
) -> None:
    fill(deployment)
    deployment.wait_caught_up()
    endpoint.reset()
    result = deployment.cli("resync")
    assert result.returncode == 0, result.stderr
    assert "requested" in result.stdout and "resync complete" in result.stdout
    assert endpoint.requests == 0
    running.assert_running()
    deployment.execute("DELETE FROM articles WHERE id = 4")
    deployment.execute("INSERT INTO articles (id, title) VALUES (1000, 'new after resync')")
    deployment.wait_caught_up()
    assert_in_step(deployment)


class Writer(threading.Thread):
    """Updates, deletes and inserts rows of `articles` until stopped."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(daemon=True)
        self.deployment = deployment
        self.halt = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(7)
        try:
            with psycopg.connect(self.deployment.dsn, autocommit=True) as conn:
                while not self.halt.is_set():
                    row = rng.randint(1, ROWS * 2)
                    action = rng.random()
                    if action < 0.6:
                        conn.execute(
                            "UPDATE articles SET body = %s WHERE id = %s",
                            (f"edited {self.writes} of {row}", row),
                        )
                    elif action < 0.8:
                        conn.execute("DELETE FROM articles WHERE id = %s", (row,))
                    else:
                        conn.execute(
                            "INSERT INTO articles (id, title) VALUES (%s, %s) "
                            "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title",
                            (row, f"inserted {self.writes}"),
                        )
                    self.writes += 1
        except BaseException as error:
            self.error = error


def test_table_resync_while_another_process_writes_ends_with_every_row_current(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    fill(deployment)
    deployment.extra = {"snapshot": {"chunk_rows": 7, "poll_interval": 0.2}}
    process = deployment.start()
    try:
        deployment.wait_caught_up()
        # Damage the sink behind the running streamer's back: the resync must not trust what
        # it remembers.
        deployment.execute_sink("DELETE FROM cdc_embeddings WHERE source_id IN ('2', '30')")
        deployment.execute_sink(
            "UPDATE cdc_embeddings SET content_hash = 'x' WHERE source_id = '5'"
        )
        endpoint.latency = 0.02
        writer = Writer(deployment)
        writer.start()
        try:
            result = deployment.cli("resync", "--table", "public.articles", timeout=240)
        finally:
            writer.halt.set()
            writer.join(30)
        assert writer.error is None, writer.error
        assert result.returncode == 0, result.stderr
        assert "resync complete" in result.stdout
        assert writer.writes > 20, "the writer barely ran during the resync"
        deployment.wait_caught_up()
        assert_in_step(deployment)
        assert progress(deployment) == {
            "kind": "resync",
            "status": "done",
            "phase": "orphans",
            "rows_done": pytest.approx(ROWS, abs=ROWS),
        }
    finally:
        assert process.stop() == 0, process.output


def test_table_resync_killed_mid_way_resumes_where_its_work_landed(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    fill(deployment, 120)
    deployment.extra = {"snapshot": {"chunk_rows": 5, "poll_interval": 0.2}}
    embed_all(deployment)
    # Every vector gone behind wal2vec's back: each chunk of the resync needs the endpoint.
    deployment.execute_sink("DELETE FROM cdc_embeddings")
    endpoint.latency = 0.1
    process = deployment.start()
    wait_until(lambda: slot_active(deployment), what="the streamer to hold its slot")
    result = deployment.cli("resync", "--table", "public.articles", "--no-wait")
    assert result.returncode == 0, result.stderr
    wait_until(
        lambda: (p := progress(deployment)) is not None and p["rows_done"] >= 20,
        what="the resync to get some way",
    )
    process.kill()
    mid = progress(deployment)
    assert mid is not None and mid["status"] == "running" and mid["rows_done"] < 120
    status = deployment.cli("status")
    assert f"resync running, rows: {mid['rows_done']} / 120" in status.stdout, status.stdout
    endpoint.latency = 0.0
    process = deployment.start()
    try:
        wait_until(
            lambda: (p := progress(deployment)) is not None and p["status"] == "done",
            timeout=120,
            what="the resumed resync to finish",
        )
        # Resumed, not restarted: every row was counted once.
        done = progress(deployment)
        assert done is not None and done["rows_done"] == 120
        deployment.wait_caught_up()
        assert_in_step(deployment)
    finally:
        assert process.stop() == 0, process.output


def test_table_resync_with_no_streamer_runs_one_and_stops(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    fill(deployment)
    embed_all(deployment)
    deployment.execute_sink("UPDATE cdc_embeddings SET content_hash = 'x' WHERE source_id = '9'")
    endpoint.reset()
    result = deployment.cli("resync", "--table", "public.articles")
    assert result.returncode == 0, result.stderr
    assert "resync complete" in result.stdout
    assert endpoint.inputs == ["Title 9\n\nBody of article 9"]
    assert_in_step(deployment)
    result = deployment.cli("resync", "--table", "public.nope")
    assert result.returncode == 2
    assert "public.nope" in result.stderr and "public.articles" in result.stderr


class Reader(threading.Thread):
    """Runs a similarity query against the live sink table until stopped."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(daemon=True)
        self.deployment = deployment
        self.halt = threading.Event()
        self.answers = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with self.deployment.connect_sink() as conn:
            while not self.halt.is_set():
                try:
                    rows = conn.execute(
                        "SELECT source_id FROM cdc_embeddings ORDER BY embedding <=> "
                        "(SELECT embedding FROM cdc_embeddings WHERE source_id = '1' LIMIT 1) "
                        "LIMIT 3"
                    ).fetchall()
                except psycopg.Error as error:
                    self.failures.append(str(error))
                    continue
                if len(rows) == 3:
                    self.answers += 1
                else:
                    self.failures.append(f"{len(rows)} rows")


def test_model_change_is_refused_then_resync_rebuilds_while_readers_keep_answering(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    fill(deployment)
    embed_all(deployment)
    deployment.extra = {"embedding": {"model": "text-embedding-3-large", "dimensions": 16}}
    refused = deployment.cli("run", timeout=60)
    assert refused.returncode == 2
    assert "cdc resync" in refused.stderr and "text-embedding-3-large" in refused.stderr

    endpoint.latency = 0.05
    reader = Reader(deployment)
    reader.start()
    try:
        result = deployment.cli("resync", timeout=240)
    finally:
        reader.halt.set()
        reader.join(30)
    assert result.returncode == 0, result.stderr
    assert not reader.failures, reader.failures[:5]
    assert reader.answers > 0
    with deployment.connect_sink() as conn:
        stored = conn.execute(
            "SELECT count(*), count(DISTINCT model), min(model), min(vector_dims(embedding)) "
            "FROM cdc_embeddings"
        ).fetchone()
        tables = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'cdc_embeddings%%' ORDER BY 1"
        ).fetchall()
    assert stored == (ROWS, 1, "text-embedding-3-large", 16)
    assert [t[0] for t in tables] == [
        "cdc_embeddings",
        "cdc_embeddings_embedding_idx",
        "cdc_embeddings_pkey",
    ]
    process = deployment.start()
    try:
        deployment.execute("UPDATE articles SET title = 'on the new model' WHERE id = 2")
        deployment.wait_caught_up()
        row = deployment.sink_rows()
        edited = [r for r in row if r["source_id"] == "2"]
        assert edited and edited[0]["model"] == "text-embedding-3-large"
        assert edited[0]["content"].startswith("on the new model")
    finally:
        assert process.stop() == 0, process.output


def _invalidate_slot(deployment: Deployment) -> None:
    """Write WAL and checkpoint until the server gives up the (inactive) slot."""
    wait_until(deployment.push_wal_past_the_slot, what="the slot to be invalidated")


def test_a_slot_lost_past_max_slot_wal_keep_size_exits_3_and_resync_recovers(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    fill(deployment)
    embed_all(deployment)
    with deployment.connect() as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        _invalidate_slot(deployment)
    finally:
        with deployment.connect() as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
    result = deployment.cli("run")
    assert result.returncode == 3, result.stderr
    assert "cdc resync" in result.stderr and "lost" in result.stderr
    # Reported at once, not retried: no "starting again" before giving up.
    assert "starting again" not in result.stderr, "a lost slot was retried instead of reported"
    status = deployment.cli("status")
    assert status.returncode == 1 and "cdc resync" in status.stdout
    result = deployment.cli("resync")
    assert result.returncode == 0, result.stderr
    assert_in_step(deployment)
    assert deployment.cli("status").returncode == 0


def test_resync_can_be_killed_and_the_snapshot_started_again(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    """kill -9 during a full resync: the next `cdc run` takes the snapshot again."""
    fill(deployment)
    embed_all(deployment)
    deployment.execute_sink("DELETE FROM cdc_embeddings")
    endpoint.latency = 0.3
    deployment.extra = {"snapshot": {"batch_rows": 5}}
    deployment.write_config()
    with (deployment.workdir / "resync.out").open("w") as out:
        resync = subprocess.Popen(
            [sys.executable, "-m", "cdc", "resync", "--config", str(deployment.config_path)],
            env=deployment.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: (
                (p := progress(deployment)) is not None
                and p["kind"] == "snapshot"
                and p["status"] == "running"
                and p["rows_done"] >= 10
            ),
            what="the resync's snapshot to get some way",
        )
    finally:
        resync.kill()
        resync.wait()
    endpoint.latency = 0.0
    process = deployment.start()
    try:
        deployment.wait_caught_up()
        assert_in_step(deployment)
    finally:
        assert process.stop() == 0, process.output


def test_a_table_added_to_the_configuration_later_gets_its_existing_rows(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    fill(deployment, 5)
    embed_all(deployment)
    deployment.execute("CREATE TABLE faqs (id int PRIMARY KEY, question text)")
    deployment.execute("INSERT INTO faqs SELECT g, 'Question ' || g FROM generate_series(1, 12) g")
    deployment.tables.append(Table("public.faqs", ["question"]))
    process = deployment.start()
    try:
        wait_until(
            lambda: (
                len([r for r in deployment.sink_rows() if r["source_table"] == "public.faqs"]) == 12
            ),
            what="the added table's rows to be embedded",
        )
        deployment.execute("UPDATE faqs SET question = 'streamed too' WHERE id = 3")
        deployment.wait_caught_up()
        assert_in_step(deployment)
    finally:
        assert process.stop() == 0, process.output
