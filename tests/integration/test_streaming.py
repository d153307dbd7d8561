"""`cdc run` as a user runs it, against a real PostgreSQL and a local OpenAI-compatible server."""

from __future__ import annotations

from tests.backends import every_backend
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import Deployment, assert_in_step, free_port, wait_until

pytestmark = every_backend


def test_rows_present_before_start_are_embedded_then_changes_stream(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) VALUES "
        "(1, 'Postgres', 'Logical replication streams changes', 7), (2, 'Vectors', NULL, 8)"
    )
    process = deployment.start()
    try:
        deployment.wait_caught_up()
        assert assert_in_step(deployment) == 2
        deployment.execute("INSERT INTO articles (id, title, body) VALUES (3, 'New', 'Row')")
        deployment.execute("UPDATE articles SET body = 'Edited body' WHERE id = 1")
        deployment.execute("DELETE FROM articles WHERE id = 2")
        deployment.wait_caught_up()
        assert assert_in_step(deployment) == 2
        rows = {r["source_id"]: r for r in deployment.sink_rows()}
        assert rows["1"]["content"] == "Postgres\n\nEdited body"
        assert rows["1"]["metadata"] == {"author_id": "7"}
        assert rows["1"]["lsn"] is not None
    finally:
        assert process.stop() == 0, process.output


def test_a_lone_change_lands_without_waiting_max_age(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    # Nothing else is arriving: once the stream is quiet the change is flushed, long before
    # max_age (30 s here; the bound below is generous, for a loaded machine).
    deployment.extra = {"buffer": {"max_age": 30}}
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'alone')")
        wait_until(deployment.sink_rows, timeout=15, what="the lone row's vector")
        deployment.execute("UPDATE articles SET title = 'still alone' WHERE id = 1")
        wait_until(
            lambda: [r["content"] for r in deployment.sink_rows()] == ["still alone"],
            timeout=15,
            what="the lone edit's vector",
        )
    finally:
        assert process.stop() == 0, process.output


def test_update_of_a_non_content_column_makes_no_api_call(
    deployment: Deployment, endpoint: FakeOpenAIServer, running
) -> None:
    deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Title', 'Body')")
    deployment.wait_caught_up()
    before = endpoint.requests
    deployment.execute("UPDATE articles SET views = views + 1 WHERE id = 1")
    deployment.execute("UPDATE articles SET views = views + 1 WHERE id = 1")
    deployment.wait_caught_up()
    assert endpoint.requests == before
    assert_in_step(deployment)


def test_content_becoming_empty_removes_the_vectors(
    deployment: Deployment, endpoint: FakeOpenAIServer, running
) -> None:
    deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Title', 'Body')")
    deployment.wait_caught_up()
    assert len(deployment.sink_rows()) == 1
    deployment.execute("UPDATE articles SET title = NULL, body = '' WHERE id = 1")
    deployment.wait_caught_up()
    assert deployment.sink_rows() == []
    assert_in_step(deployment)


def test_primary_key_change_moves_the_vector(
    deployment: Deployment, endpoint: FakeOpenAIServer, running
) -> None:
    deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Title', 'Body')")
    deployment.wait_caught_up()
    deployment.execute("UPDATE articles SET id = 100 WHERE id = 1")
    deployment.wait_caught_up()
    assert [r["source_id"] for r in deployment.sink_rows()] == ["100"]
    assert_in_step(deployment)


def test_truncate_removes_the_tables_vectors(
    deployment: Deployment, endpoint: FakeOpenAIServer, running
) -> None:
    deployment.execute(
        "INSERT INTO articles (id, title) SELECT g, 'title ' || g FROM generate_series(1, 20) g"
    )
    deployment.wait_caught_up()
    assert len(deployment.sink_rows()) == 20
    deployment.execute("TRUNCATE articles")
    deployment.execute("INSERT INTO articles (id, title) VALUES (5, 'after truncate')")
    deployment.wait_caught_up()
    assert [r["source_id"] for r in deployment.sink_rows()] == ["5"]
    assert_in_step(deployment)


def test_rolled_back_transaction_leaves_no_trace(
    deployment: Deployment, endpoint: FakeOpenAIServer, running
) -> None:
    with deployment.connect() as conn:
        conn.autocommit = False
        conn.execute("INSERT INTO articles (id, title) VALUES (1, 'never')")
        conn.rollback()
    deployment.wait_caught_up()
    assert deployment.sink_rows() == []
    assert "never" not in endpoint.inputs


def test_metrics_endpoint_serves_prometheus_text(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    import re
    import urllib.request

    deployment.extra = {"metrics": {"port": free_port()}}
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'metrics')")
        deployment.wait_caught_up()
        port = deployment.extra["metrics"]["port"]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert re.search(
            r'^cdc_changes_total\{op="insert",table="public.articles"\} 1.0$', body, re.M
        )
        assert re.search(r"^cdc_up 1.0$", body, re.M)
        assert "cdc_replication_lag_bytes" in body
        assert "sk-test-secret" not in body
    finally:
        assert process.stop() == 0


def test_metadata_change_updates_the_sink_without_an_api_call(
    deployment: Deployment, endpoint: FakeOpenAIServer, running
) -> None:
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) VALUES (1, 'Title', 'Body', 7)"
    )
    deployment.wait_caught_up()
    before = endpoint.requests
    deployment.execute("UPDATE articles SET author_id = 8 WHERE id = 1")
    deployment.wait_caught_up()
    assert endpoint.requests == before
    [row] = deployment.sink_rows()
    assert row["metadata"] == {"author_id": "8"}
    assert_in_step(deployment)
