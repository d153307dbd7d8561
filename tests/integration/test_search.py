"""`cdc search` and `cdc similar` against the sink `cdc run` keeps, with real vectors.

The expected answer is computed here, exhaustively, from the vectors the sink holds (the fake
endpoint's bag-of-words embeddings): every chunk's cosine distance to the query, each source
row at its best chunk. On tables this small the HNSW search visits every node, so the command
must return exactly that order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import numpy as np
from psycopg import sql

from cdc.commands.search import search
from cdc.config import load_config
from cdc.embedding.factory import make_provider
from cdc.sink.nearest import Hit, nearest_query
from tests.fakes.openai_server import FakeOpenAIServer, embed_vector
from tests.harness import DIMENSIONS, Deployment, Table

ARTICLES = [
    (1, "Postgres replication", "Logical replication slots stream the write-ahead log", 1),
    (2, "Vector search", "HNSW indexes find nearest neighbours fast", 2),
    (3, "Baking bread", "Flour water salt and yeast make bread", 1),
    (4, "Replication lag", "Monitor the replication lag of every slot", 2),
    (5, "Sourdough", "A sourdough starter makes bread rise slowly", 3),
    (6, "Gardening", "Tomatoes need sun water and patience", 3),
    (8, None, None, 1),  # no content, no vector
]
# Cut into several chunks with chunk_tokens 16; one of them is about replication.
LONG_BODY = (
    "Cheese is made from milk by adding cultures and rennet then pressing the curds. "
    "Aged cheese develops sharp flavour over many months in a cool cellar. "
    "Meanwhile a replication slot keeps the write-ahead log until the subscriber confirms it. "
    "Soft cheese is eaten fresh and does not keep for long."
)
QUERY = "replication slots and replication lag"

FAQS_DDL = """
CREATE TABLE faqs (
    lang text, id int, question text, answer text, PRIMARY KEY (lang, id)
)
"""
FAQS = [
    ("en", 1, "How do replication slots work?", "They keep the log until it is confirmed"),
    ("en", 2, "How do I bake bread?", "Mix flour water salt and yeast"),
    ("fr", 1, "Comment marche la réplication?", "Les slots gardent le journal"),
    ("fr", 2, "What is a vector index?", "HNSW finds nearest neighbours"),
]


def load_articles(deployment: Deployment) -> None:
    deployment.tables[0].options = {"chunk_tokens": 16}
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) "
        "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::int[])",
        [list(column) for column in zip(*ARTICLES, strict=True)],
    )
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) VALUES (7, 'Cheese', %s, 1)",
        (LONG_BODY,),
    )


def add_faqs(deployment: Deployment) -> None:
    deployment.execute(FAQS_DDL)
    deployment.execute(
        "INSERT INTO faqs SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[])",
        [list(column) for column in zip(*FAQS, strict=True)],
    )
    deployment.tables.append(
        Table("public.faqs", ["question", "answer"], ["lang"], target="faq_embeddings")
    )


def cosine_distance(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def stored(deployment: Deployment, sink_table: str = "cdc_embeddings") -> list[dict[str, Any]]:
    rows = deployment.sink_rows(sink_table)
    for row in rows:
        row["vector"] = np.array(json.loads(row["embedding"]), dtype=np.float32)
    return rows


def expected(
    rows: list[dict[str, Any]],
    query: np.ndarray[Any, Any],
    keep: Callable[[dict[str, Any]], bool] = lambda row: True,
) -> list[tuple[str, str, int, float]]:
    """(table, id, best chunk, distance) of every row, nearest first: the exhaustive answer."""
    best: dict[tuple[str, str], tuple[float, int]] = {}
    for row in rows:
        if not keep(row):
            continue
        key = (row["source_table"], row["source_id"])
        candidate = (cosine_distance(row["vector"], query), row["chunk"])
        best[key] = min(best.get(key, candidate), candidate)
    ranked = sorted(best.items(), key=lambda item: (item[1][0], item[0]))
    return [(table, sid, chunk, distance) for (table, sid), (distance, chunk) in ranked]


def run_json(deployment: Deployment, *args: str) -> list[dict[str, Any]]:
    result = deployment.cli(*args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    hits: list[dict[str, Any]] = json.loads(result.stdout)
    assert [hit["rank"] for hit in hits] == list(range(1, len(hits) + 1))
    return hits


def assert_answer(
    hits: list[dict[str, Any]], wanted: list[tuple[str, str, int, float]], k: int = 10
) -> None:
    got = [(h["source_table"], h["source_id"], h["chunk"]) for h in hits]
    assert got == [(table, sid, chunk) for table, sid, chunk, _ in wanted[:k]]
    for hit, (*_, distance) in zip(hits, wanted, strict=False):
        assert abs(hit["distance"] - distance) < 1e-4, (hit, distance)


def test_search_ranks_rows_by_their_best_chunk_with_filters_and_k(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    load_articles(deployment)
    process = deployment.start()
    try:
        deployment.wait_ready()
        # One more row through the stream, so both the snapshot and the stream are searched.
        deployment.execute(
            "INSERT INTO articles (id, title, body, author_id) VALUES "
            "(9, 'Slots', 'Replication slots retain WAL: watch the lag', 2)"
        )
        deployment.wait_caught_up()
    finally:
        assert process.stop() == 0, process.output
    rows = stored(deployment)
    assert len({r["chunk"] for r in rows if r["source_id"] == "7"}) > 2
    wanted = expected(rows, embed_vector(QUERY, DIMENSIONS))
    assert len(wanted) == 8  # 9 rows, one without content

    requests = endpoint.requests
    hits = run_json(deployment, "search", QUERY)
    assert_answer(hits, wanted)
    assert endpoint.requests == requests + 1 and endpoint.inputs[-1] == QUERY
    # The long row counts once, at its best chunk, which is not its first.
    (cheese,) = [h for h in hits if h["source_id"] == "7"]
    assert cheese["chunk"] > 0 and "replication slot" in cheese["content"]
    assert set(hits[0]) == {
        "rank", "source_table", "source_id", "chunk", "distance", "similarity", "content",
        "metadata",
    }  # fmt: skip
    assert hits[0]["metadata"] == {"author_id": wanted_author(wanted[0][1])}
    assert abs(hits[0]["similarity"] - (1 - hits[0]["distance"])) < 1e-9

    assert_answer(run_json(deployment, "search", QUERY, "-k", "3"), wanted, k=3)
    by_author = expected(rows, embed_vector(QUERY, DIMENSIONS), author_is("1"))
    assert_answer(
        run_json(deployment, "search", QUERY, "--where", "author_id=1", "--table", "articles"),
        by_author,
    )
    assert {sid for _, sid, *_ in by_author} == {"1", "3", "7"}
    assert run_json(deployment, "search", QUERY, "--where", "author_id=42") == []

    text = deployment.cli("search", QUERY, "-k", "2")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["#", "distance", "table", "id"] and len(lines) == 3
    assert lines[1].split()[:4] == ["1", f"{wanted[0][3]:.4f}", "public.articles", wanted[0][1]]


def wanted_author(source_id: str) -> str:
    authors = {str(a[0]): str(a[3]) for a in ARTICLES} | {"7": "1", "9": "2"}
    return authors[source_id]


def author_is(author: str) -> Callable[[dict[str, Any]], bool]:
    return lambda row: bool(row["metadata"].get("author_id") == author)


def test_similar_uses_the_rows_stored_vectors_and_excludes_the_row(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    load_articles(deployment)
    process = deployment.start()
    try:
        deployment.wait_ready()
    finally:
        assert process.stop() == 0, process.output
    rows = stored(deployment)
    requests = endpoint.requests

    def others(source_id: str) -> Callable[[dict[str, Any]], bool]:
        return lambda row: bool(row["source_id"] != source_id)

    one = next(r["vector"] for r in rows if r["source_id"] == "1")
    hits = run_json(deployment, "similar", "--table", "articles", "--id", "1")
    assert_answer(hits, expected(rows, one, others("1")))
    assert len(hits) == 6 and "1" not in {h["source_id"] for h in hits}
    # A long row is compared by the mean of its chunks' vectors.
    mean = np.mean([r["vector"] for r in rows if r["source_id"] == "7"], axis=0)
    hits = run_json(deployment, "similar", "--table", "public.articles", "--id", "7", "-k", "2")
    assert_answer(hits, expected(rows, mean, others("7")), k=2)
    assert endpoint.requests == requests  # no embedding API call

    filtered = run_json(
        deployment, "similar", "--table", "articles", "--id", "1", "--where", "author_id=3"
    )
    assert [h["source_id"] for h in filtered] == [
        sid for _, sid, *_ in expected(rows, one, author_is("3"))
    ]
    assert {h["metadata"]["author_id"] for h in filtered} == {"3"}

    for missing in ("8", "999"):  # empty content; no such row
        result = deployment.cli("similar", "--table", "articles", "--id", missing)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"public.articles id {missing} has no vector" in result.stderr


def test_search_spans_sink_tables_and_similar_looks_in_another_table(
    deployment: Deployment,
) -> None:
    load_articles(deployment)
    add_faqs(deployment)
    process = deployment.start()
    try:
        deployment.wait_ready()
    finally:
        assert process.stop() == 0, process.output
    articles, faqs = stored(deployment), stored(deployment, "faq_embeddings")
    assert faqs and all(r["source_table"] == "public.faqs" for r in faqs)
    query = embed_vector(QUERY, DIMENSIONS)

    everywhere = run_json(deployment, "search", QUERY, "-k", "20")
    assert_answer(everywhere, expected(articles + faqs, query), k=20)
    assert {h["source_table"] for h in everywhere} == {"public.articles", "public.faqs"}
    assert_answer(run_json(deployment, "search", QUERY, "--table", "faqs"), expected(faqs, query))
    # `lang` is only a column of faqs: articles cannot match it, so only faqs are searched.
    english = run_json(deployment, "search", QUERY, "--where", "lang=en")
    assert_answer(english, expected(faqs, query, lambda row: row["metadata"]["lang"] == "en"))
    assert {h["source_id"] for h in english} == {'["en", "1"]', '["en", "2"]'}

    # A composite key in the sink's JSON form, or spelled loosely.
    faq = next(r["vector"] for r in faqs if r["source_id"] == '["en", "1"]')
    for spelling in ('["en", "1"]', '["en",1]'):
        hits = run_json(
            deployment, "similar", "--table", "faqs", "--id", spelling, "--in", "articles"
        )
        assert_answer(hits, expected(articles, faq))
    one = next(r["vector"] for r in articles if r["source_id"] == "1")
    hits = run_json(
        deployment, "similar", "--table", "articles", "--id", "1", "--in", "faqs",
        "--where", "lang=fr",
    )  # fmt: skip
    assert_answer(hits, expected(faqs, one, lambda row: row["metadata"]["lang"] == "fr"))


def test_bad_usage_is_named_before_any_embedding_call(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    assert deployment.cli("setup").returncode == 0
    requests = endpoint.requests
    for args, message in [
        (("search", "x", "--where", "color=red"), "--where color: not a metadata column"),
        (("search", "x", "--where", "author_id"), "write it as COLUMN=VALUE"),
        (("search", "x", "--table", "nope"), "--table nope"),
        (("search", "x", "-k", "0"), "-k 0"),
        (("search", "  "), "the search text is empty"),
        (("similar", "--table", "articles", "--id", "1", "--in", "nope"), "--table nope"),
        (("similar", "--table", "articles", "--id", "1", "--where", "x=1"), "--where x"),
    ]:
        result = deployment.cli(*args)
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert endpoint.requests == requests
    # Nothing embedded yet: search answers nothing, similar says the row has no vector.
    assert run_json(deployment, "search", "anything") == []
    result = deployment.cli("similar", "--table", "articles", "--id", "1")
    assert result.returncode == 1 and "has no vector" in result.stderr


def test_halfvec_sink_and_the_python_api(deployment: Deployment) -> None:
    deployment.extra = {"sink": {"vector_type": "halfvec"}}
    load_articles(deployment)
    process = deployment.start()
    try:
        deployment.wait_ready()
    finally:
        assert process.stop() == 0, process.output
    rows = stored(deployment)
    settings = load_config(deployment.write_config(), environ={})

    async def ask() -> list[Hit]:
        provider = make_provider(settings)
        try:
            return await search(settings, provider, QUERY, k=3, where={"author_id": "2"})
        finally:
            await provider.aclose()

    hits = asyncio.run(ask())
    wanted = expected(rows, embed_vector(QUERY, DIMENSIONS), author_is("2"))
    assert [(h.source_id, h.chunk) for h in hits] == [(sid, c) for _, sid, c, _ in wanted[:3]]
    for hit, (*_, distance) in zip(hits, wanted, strict=False):
        assert abs(hit.distance - distance) < 1e-3  # the query is rounded to halfvec too
    three = next(r["vector"] for r in rows if r["source_id"] == "3")
    similar = run_json(deployment, "similar", "--table", "articles", "--id", "3", "-k", "2")
    wanted = expected(rows, three, lambda row: bool(row["source_id"] != "3"))
    assert [h["source_id"] for h in similar] == [sid for _, sid, *_ in wanted[:2]]


def test_the_query_is_served_by_the_hnsw_index(deployment: Deployment) -> None:
    load_articles(deployment)
    process = deployment.start()
    try:
        deployment.wait_ready()
    finally:
        assert process.stop() == 0, process.output
    query = nearest_query(("public", "cdc_embeddings"), "vector", 1, exclude=True)
    params = {
        "query": json.dumps([float(x) for x in embed_vector(QUERY, DIMENSIONS)]),
        "tables": ["public.articles"],
        "key0": "author_id",
        "value0": "1",
        "self_table": "public.articles",
        "self_id": "1",
        "limit": 40,
    }
    with deployment.connect() as conn, conn.transaction():
        # On a table this small the planner rightly prefers reading the few rows by primary key
        # and sorting them; without that choice it must find the ordered path the index gives.
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        plan = "\n".join(
            str(row[0]) for row in conn.execute(sql.SQL("EXPLAIN ") + query, params).fetchall()
        )
    assert "Index Scan using cdc_embeddings_embedding_idx" in plan, plan
    assert "Sort" not in plan, plan


def test_filtered_and_chunky_queries_still_return_k_rows(deployment: Deployment) -> None:
    """Through the HNSW index, a selective filter (1 row in 50) and rows of many chunks still
    give k rows, near the exact answer."""
    assert deployment.cli("setup").returncode == 0
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3000, DIMENSIONS)).astype(np.float32)
    rows = [
        (str(i), 0, json.dumps(vector.tolist()), json.dumps({"author_id": str(i % 50)}))
        for i, vector in enumerate(vectors)
    ]
    # Five rows of 30 chunks each, every chunk nearer to row 0 than any other row is.
    for i in range(3000, 3005):
        for chunk in range(30):
            near = vectors[0] + rng.normal(scale=0.01, size=DIMENSIONS).astype(np.float32)
            rows.append((str(i), chunk, json.dumps(near.tolist()), '{"author_id": "x"}'))
    one = json.dumps(vectors[1].tolist())
    with deployment.connect() as conn:
        conn.cursor().executemany(
            "INSERT INTO cdc_embeddings (source_table, source_id, chunk, content, "
            "content_hash, model, embedding, metadata) VALUES "
            "('public.articles', %s, %s, 'text', 'hash', 'm', %s::vector, %s::jsonb)",
            rows,
        )
        conn.execute("ANALYZE cdc_embeddings")
        # Unfiltered, on a sink this size, the planner picks the index by itself.
        plan = conn.execute(
            sql.SQL("EXPLAIN ")
            + nearest_query(("public", "cdc_embeddings"), "vector", 0, exclude=False),
            {"query": one, "tables": ["public.articles"], "limit": 40},
        ).fetchall()
        assert "Index Scan using cdc_embeddings_embedding_idx" in str(plan), plan
        # What the index gives a filtered query without help: the few matches among the
        # hnsw.ef_search (40) candidates it looked at.
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            conn.execute("SET LOCAL enable_sort = off")
            plain = conn.execute(
                "SELECT source_id FROM cdc_embeddings WHERE metadata->>'author_id' = '7' "
                "ORDER BY embedding <=> %s::vector LIMIT 10",
                (one,),
            ).fetchall()
    assert len(plain) < 10
    # Filtered, the planner rightly reads this small sink whole; make `cdc` take the index
    # path as it would on a big one, through the sink DSN's server options.
    forced = "&options=" + quote("-c enable_seqscan=off -c enable_sort=off")
    deployment.extra = {"sink": {"dsn": deployment.dsn + forced}}

    filtered = run_json(
        deployment, "similar", "--table", "articles", "--id", "1", "--where", "author_id=7"
    )
    assert len(filtered) == 10 and {h["metadata"]["author_id"] for h in filtered} == {"7"}
    exact = sorted(
        (i for i in range(3000) if i % 50 == 7),
        key=lambda i: cosine_distance(vectors[i], vectors[1]),
    )[:10]
    assert len({h["source_id"] for h in filtered} & {str(i) for i in exact}) >= 8

    chunky = run_json(deployment, "similar", "--table", "articles", "--id", "0", "-k", "10")
    ids = [h["source_id"] for h in chunky]
    assert len(ids) == 10 == len(set(ids)) and "0" not in ids
    assert set(ids[:5]) == {"3000", "3001", "3002", "3003", "3004"}
