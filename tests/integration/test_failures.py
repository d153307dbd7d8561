"""Crashes, a flaky or rejecting endpoint, signals, bad configuration, a server without
logical decoding, and a quiet publication. (kill -9 under a workload, a restarted server, an
endpoint gone and a lost slot are in test_failure_modes.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import CdcProcess, Deployment, assert_in_step, free_port, scrape, wait_until
from tests.pg import PgServer, start_server, unique_slot


def test_injected_429_and_500_are_retried_and_nothing_is_lost(
    deployment: Deployment, endpoint: FakeOpenAIServer, running: CdcProcess
) -> None:
    endpoint.fail_next(2, status=429, retry_after=0.2)
    endpoint.fail_next(2, status=500)
    deployment.execute(
        "INSERT INTO articles (id, title) SELECT g, 'retry ' || g FROM generate_series(1, 50) g"
    )
    deployment.wait_caught_up()
    statuses = [entry.status for entry in endpoint.request_log]
    assert statuses[:4] == [429, 429, 500, 500] and statuses[-1] == 200
    assert assert_in_step(deployment) == 50
    assert deployment.dead_letters() == []


def test_a_row_rejected_for_good_goes_to_dead_letters_and_the_rest_land(
    deployment: Deployment, endpoint: FakeOpenAIServer, running: CdcProcess
) -> None:
    endpoint.reject_inputs_containing("POISON")
    deployment.execute(
        "INSERT INTO articles (id, title) SELECT g, 'fine ' || g FROM generate_series(1, 9) g"
    )
    deployment.execute("INSERT INTO articles (id, title) VALUES (99, 'POISON pill')")
    deployment.wait_caught_up()
    [letter] = deployment.dead_letters()
    assert (letter["source_table"], letter["source_id"]) == ("public.articles", "99")
    assert letter["content"] == "POISON pill" and letter["error"]
    assert assert_in_step(deployment) == 9  # the checker skips dead-lettered rows
    assert "99" not in {r["source_id"] for r in deployment.sink_rows()}
    # The stream goes on, and a later good edit of the row resolves its dead letter.
    deployment.execute("UPDATE articles SET title = 'cured' WHERE id = 99")
    deployment.wait_caught_up()
    assert deployment.dead_letters() == []
    assert assert_in_step(deployment) == 10


def test_sigterm_flushes_what_is_buffered_and_exits_0(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    # A long max_age and no idle flush keep changes in the buffer: only the drain on SIGTERM
    # can flush them.
    port = free_port()
    buffer = {"max_age": 120, "idle_flush": None}
    deployment.extra = {"buffer": buffer, "metrics": {"port": port}}
    process = deployment.start()
    deployment.wait_ready()
    deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'buffered')")
    target = deployment.current_lsn()
    wait_until(lambda: scrape(port, "cdc_buffer_rows") == 1.0, what="the change in the buffer")
    assert endpoint.requests == 0
    assert process.stop() == 0, process.output
    assert [r["source_id"] for r in deployment.sink_rows()] == ["1"]
    assert deployment.confirmed_past(target), "the drained change was confirmed to the server"


def test_bad_config_key_exits_2_naming_it(deployment: Deployment) -> None:
    deployment.extra = {"source": {"dnss": "oops"}}
    result = deployment.cli("run")
    assert result.returncode == 2
    assert "source.dnss" in result.stderr and "unknown key" in result.stderr
    assert "sk-test-secret" not in result.stderr + result.stdout


def test_missing_table_and_column_exit_2_naming_them(deployment: Deployment) -> None:
    deployment.tables[0].table = "public.nope"
    result = deployment.cli("setup")
    assert result.returncode == 2 and "public.nope" in result.stderr
    deployment.tables[0].table = "public.articles"
    deployment.tables[0].columns = ["title", "summary"]
    result = deployment.cli("setup")
    assert result.returncode == 2 and "summary" in result.stderr


def test_unreachable_database_exits_3_without_printing_the_password(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.dsn = f"postgresql://cdc:hunter2@/nodb?host={tmp_path}&connect_timeout=2"
    result = deployment.cli("setup")
    assert result.returncode == 3, result.stderr
    assert "cannot connect to the source" in result.stderr
    assert "hunter2" not in result.stderr


def test_wal_level_replica_gives_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, endpoint: FakeOpenAIServer, tmp_path: Path
) -> None:
    server: PgServer = start_server(
        tmp_path_factory.mktemp("replica") / "data", {"wal_level": "replica"}
    )
    try:
        server.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text)")
        deployment = Deployment(
            dsn=server.dsn(),
            slot=unique_slot(),
            base_url=endpoint.url,
            workdir=tmp_path,
            tables=[],
        )
        from tests.harness import Table

        deployment.tables = [Table("public.articles", ["title", "body"])]
        result = deployment.cli("run")
        assert result.returncode == 2, result.stderr
        assert "wal_level = replica" in result.stderr and "wal_level = logical" in result.stderr
    finally:
        server.close()


def test_a_quiet_publication_does_not_hold_back_the_slot(
    deployment: Deployment, running: CdcProcess
) -> None:
    deployment.execute("CREATE TABLE unrelated (id int PRIMARY KEY, note text)")
    deployment.execute(
        "INSERT INTO unrelated SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g"
    )
    target = deployment.current_lsn()
    # Nothing in the publication changed; keepalives alone must move the confirmed position.
    wait_until(lambda: deployment.checkpoint_reached(target), what="confirmed past quiet WAL")


def test_status_reports_slot_lag_and_vectors(deployment: Deployment, running: CdcProcess) -> None:
    deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'a'), (2, 'b')")
    deployment.wait_caught_up()
    result = deployment.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["slot_exists"] and report["slot_active"]
    assert report["vectors"] == {"public.articles": 2}
    assert report["snapshot_done"] and report["checkpoint_lsn"]
    assert report["lag_bytes"] is not None and report["dead_letters"] == 0
    [snapshot] = report["snapshots"]
    assert snapshot["table"] == "public.articles"
    assert (snapshot["kind"], snapshot["status"], snapshot["rows_done"]) == ("snapshot", "done", 0)
    text = deployment.cli("status")
    assert text.returncode == 0 and "public.articles" in text.stdout


def test_kill_9_during_the_snapshot_is_recovered_by_the_next_start(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.execute(
        "INSERT INTO articles (id, title, body) "
        "SELECT g, 'snapshot ' || g, 'row ' || g FROM generate_series(1, 5000) g"
    )
    batch_rows, workers = 1000, 2
    deployment.extra = {"snapshot": {"batch_rows": batch_rows, "workers": workers}}
    endpoint.latency = 0.3  # about 1.5 s of snapshot: five batches of 1000 rows
    first = deployment.start()
    wait_until(lambda: len(deployment.sink_rows()) >= 1000, what="part of the snapshot written")
    assert not deployment.snapshot_done()
    first.kill()
    endpoint.latency = 0.0
    second = deployment.start()
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 5000
    # Rows written before the kill were not embedded again: at most the batches in flight,
    # one per snapshot writer, were.
    assert len(endpoint.inputs) <= 5000 + workers * batch_rows
    assert second.stop() == 0, second.output


def test_table_without_primary_key_exits_2_saying_what_to_add(deployment: Deployment) -> None:
    deployment.execute("CREATE TABLE notes (body text)")
    from tests.harness import Table

    deployment.tables = [Table("public.notes", ["body"])]
    result = deployment.cli("setup")
    assert result.returncode == 2
    assert "public.notes has no primary key" in result.stderr
    assert "REPLICA IDENTITY USING INDEX" in result.stderr
