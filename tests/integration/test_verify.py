"""`cdc verify [--table T] [--repair] [--json]` against a sink damaged behind wal2vec's back."""

from __future__ import annotations

import json
from typing import Any

from tests.backends import every_backend
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import Deployment, Table, assert_in_step

pytestmark = every_backend
ROWS = 8


def content_of(number: int) -> str:
    return f"Title {number}\n\nBody of article {number}"


def build_sink(deployment: Deployment) -> None:
    """Rows 1..ROWS embedded by `cdc run`, which is stopped again."""
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) "
        "SELECT g, 'Title ' || g, 'Body of article ' || g, g FROM generate_series(1, %s) g",
        (ROWS,),
    )
    process = deployment.start()
    try:
        deployment.wait_caught_up()
    finally:
        assert process.stop() == 0, process.output
    assert assert_in_step(deployment) == ROWS


def copy_row(deployment: Deployment, source_id: str, new_id: str, chunk: int = 0) -> None:
    """Insert a sink row copied from row `source_id`'s chunk 0, under another id or chunk."""
    deployment.execute_sink(
        "INSERT INTO cdc_embeddings (source_table, source_id, chunk, content, content_hash, "
        "model, embedding, metadata, lsn) SELECT source_table, %s, %s, content, content_hash, "
        "model, embedding, metadata, lsn FROM cdc_embeddings "
        "WHERE source_table = 'public.articles' AND source_id = %s AND chunk = 0",
        (new_id, chunk, source_id),
    )


def damage(deployment: Deployment) -> None:
    deployment.execute_sink("DELETE FROM cdc_embeddings WHERE source_id = '2'")
    deployment.execute_sink(
        "UPDATE cdc_embeddings SET content_hash = 'tampered' WHERE source_id = '3'"
    )
    deployment.execute_sink("UPDATE cdc_embeddings SET model = 'old-model' WHERE source_id = '4'")
    copy_row(deployment, "5", "5", chunk=1)  # a surplus chunk
    copy_row(deployment, "1", "999")  # an orphan
    copy_row(deployment, "1", "not-a-number")  # an orphan no bigint key could name


def verify_json(deployment: Deployment, *args: str) -> tuple[int, dict[str, Any]]:
    result = deployment.cli("verify", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_verify_finds_each_kind_of_drift_and_repair_re_embeds_only_those_rows(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    build_sink(deployment)
    assert deployment.cli("verify").returncode == 0
    damage(deployment)

    result = deployment.cli("verify")
    assert result.returncode == 1, result.stdout + result.stderr
    text = result.stdout
    assert f"public.articles: {ROWS} rows checked, {ROWS - 4} ok (DRIFT)" in text
    for kind, count, example in [
        ("missing", 1, "2"),
        ("stale", 1, "3"),
        ("wrong_model", 1, "4"),
        ("wrong_chunks", 1, "5"),
        ("orphans", 2, "999"),
    ]:
        [line] = [line for line in text.splitlines() if line.split()[:1] == [kind]]
        assert line.split()[1] == str(count), line
        assert example in line, line
    assert "DRIFT: 6 rows differ" in text

    endpoint.reset()
    result = deployment.cli("verify", "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "repaired: 3 chunks embedded, 2 orphaned rows removed" in result.stdout
    assert sorted(endpoint.inputs) == sorted(content_of(n) for n in (2, 3, 4))
    assert assert_in_step(deployment) == ROWS

    endpoint.reset()
    assert deployment.cli("verify").returncode == 0
    assert endpoint.requests == 0


def test_json_output_and_table_selection(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    build_sink(deployment)
    damage(deployment)
    code, report = verify_json(deployment, "--table", "public.articles")
    assert code == 1
    assert report["drift"] is True and report["streaming"] is False
    tables = report["tables"]
    assert list(tables) == ["public.articles"]
    assert tables["public.articles"] == {
        "checked": ROWS,
        "ok": ROWS - 4,
        "missing": 1,
        "stale": 1,
        "wrong_model": 1,
        "wrong_chunks": 1,
        "orphans": 2,
        "dead_letters": 0,
        "examples": {
            "missing": ["2"],
            "stale": ["3"],
            "wrong_model": ["4"],
            "wrong_chunks": ["5"],
            "orphans": ["999", "not-a-number"],
        },
    }

    code, report = verify_json(deployment, "--repair")
    assert code == 0
    assert report["drift"] is False
    repaired = report["repaired"]
    assert repaired["drift"] is True and repaired["embedded_chunks"] == 3
    assert repaired["removed_rows"] == 2
    assert repaired["tables"]["public.articles"]["orphans"] == 2
    assert report["tables"]["public.articles"]["ok"] == ROWS

    result = deployment.cli("verify", "--table", "public.nope")
    assert result.returncode == 2
    assert "public.nope" in result.stderr and "public.articles" in result.stderr
    assert_in_step(deployment)


def test_repair_is_refused_while_cdc_run_streams(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'one'), (2, 'two')")
    process = deployment.start()
    try:
        deployment.wait_caught_up()
        deployment.execute_sink("DELETE FROM cdc_embeddings WHERE source_id = '2'")
        requests = endpoint.requests
        result = deployment.cli("verify", "--repair")
        assert result.returncode == 1
        assert "stop `cdc run`" in result.stderr.lower()
        assert endpoint.requests == requests
        assert [r["source_id"] for r in deployment.sink_rows()] == ["1"]
        # A plain verify runs alongside and says the streamer was running.
        code, report = verify_json(deployment)
        assert code == 1 and report["streaming"] is True
    finally:
        assert process.stop() == 0, process.output
    assert deployment.cli("verify", "--repair").returncode == 0
    assert_in_step(deployment)


def test_dead_lettered_rows_are_reported_not_drift(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    endpoint.reject_inputs_containing("POISON")
    deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'fine'), (2, 'POISON pill')")
    process = deployment.start()
    try:
        deployment.wait_caught_up()
    finally:
        assert process.stop() == 0, process.output
    assert len(deployment.dead_letters()) == 1
    code, report = verify_json(deployment)
    assert code == 0
    counts = report["tables"]["public.articles"]
    assert counts["dead_letters"] == 1 and counts["missing"] == 0 and counts["ok"] == 1
    assert counts["examples"] == {"dead_letters": ["2"]}
    # Repair leaves a dead letter alone: the API refused that content for good.
    requests = endpoint.requests
    assert deployment.cli("verify", "--repair").returncode == 0
    assert endpoint.requests == requests and len(deployment.dead_letters()) == 1
    assert_in_step(deployment)


def test_composite_keys_and_orphans_that_name_no_row(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.execute(
        "CREATE TABLE faqs (lang text, id int, question text, PRIMARY KEY (lang, id))"
    )
    deployment.execute(
        "INSERT INTO faqs VALUES ('en', 1, 'What is WAL?'), ('fa', 1, 'وال چیست؟'), "
        "('en', 2, 'Why vectors?')"
    )
    deployment.tables = [Table("public.faqs", ["question"])]
    process = deployment.start()
    try:
        deployment.wait_caught_up()
    finally:
        assert process.stop() == 0, process.output
    assert deployment.cli("verify").returncode == 0
    for orphan in ('["en", "3"]', '["en", "x"]', "not json", '["en", "1", "extra"]'):
        deployment.execute_sink(
            "INSERT INTO cdc_embeddings (source_table, source_id, chunk, content, content_hash, "
            "model, embedding, metadata) SELECT source_table, %s, 0, content, content_hash, "
            "model, embedding, metadata FROM cdc_embeddings WHERE source_id = %s",
            (orphan, '["en", "1"]'),
        )
    deployment.execute_sink(
        "UPDATE cdc_embeddings SET content_hash = 'x' WHERE source_id = %s", ('["fa", "1"]',)
    )
    code, report = verify_json(deployment)
    assert code == 1
    counts = report["tables"]["public.faqs"]
    assert counts["checked"] == 3 and counts["orphans"] == 4 and counts["stale"] == 1
    assert counts["examples"]["stale"] == ['["fa", "1"]']
    endpoint.reset()
    code, report = verify_json(deployment, "--repair")
    assert code == 0, report
    assert endpoint.inputs == ["وال چیست؟"]
    assert_in_step(deployment)
