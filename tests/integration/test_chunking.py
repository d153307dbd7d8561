"""Long content is cut into token windows; only chunks whose own text changed are embedded.

Tokens are counted by the fake endpoint with the same encoding (cl100k_base) as wal2vec, and
it records any request over 2048 inputs, 300,000 tokens or 8192 tokens in one input.
"""

from __future__ import annotations

import hashlib

from cdc.content import ChunkRule, make_chunks
from cdc.embedding.tokens import Tokenizer
from tests.fakes.openai_server import FakeOpenAIServer, count_tokens
from tests.harness import MODEL, Deployment, assert_in_step

CHUNK_TOKENS = 64
TOKENIZER = Tokenizer.for_model(MODEL)


def long_body(sentences: int) -> str:
    return " ".join(f"Sentence {i} of a long article about replication." for i in range(sentences))


def test_a_long_row_becomes_chunks_that_shrink_and_change_one_by_one(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.tables[0].options["chunk_tokens"] = CHUNK_TOKENS
    rule = ChunkRule(TOKENIZER, CHUNK_TOKENS)
    body = long_body(60)
    deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Long', %s)", (body,))
    process = deployment.start()
    try:
        deployment.wait_caught_up()
        chunks = make_chunks("Long\n\n" + body, rule)
        rows = deployment.sink_rows()
        assert len(rows) == len(chunks) > 5
        for row, chunk in zip(rows, chunks, strict=True):
            assert (row["chunk"], row["content"]) == (chunk.number, chunk.text)
            assert row["content_hash"] == hashlib.sha256(chunk.text.encode()).hexdigest()
        assert all(n <= CHUNK_TOKENS for n in count_tokens([r["content"] for r in rows]))
        assert_in_step(deployment)

        # Editing the tail: only the chunks whose own text changed go to the API.
        endpoint.reset()
        edited = body[: body.rindex("Sentence")] + "A different last sentence."
        deployment.execute("UPDATE articles SET body = %s WHERE id = 1", (edited,))
        deployment.wait_caught_up()
        new_chunks = make_chunks("Long\n\n" + edited, rule)
        old_texts = {c.text for c in chunks}
        changed = [c.text for c in new_chunks if c.text not in old_texts]
        assert 1 <= len(changed) <= 2
        assert endpoint.inputs == changed
        assert_in_step(deployment)

        # Shrinking: the surplus chunks are deleted.
        deployment.execute("UPDATE articles SET body = %s WHERE id = 1", (long_body(12),))
        deployment.wait_caught_up()
        shrunk = make_chunks("Long\n\n" + long_body(12), rule)
        assert 1 < len(shrunk) < len(new_chunks)
        assert [r["chunk"] for r in deployment.sink_rows()] == list(range(len(shrunk)))
        assert_in_step(deployment)
    finally:
        assert process.stop() == 0, process.output


def test_a_bulk_of_large_rows_never_breaks_the_request_limits(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    # 60 rows of ~37,600 tokens: 5 chunks each at the model's 8191 tokens, ~2.3M tokens in all,
    # arriving in one transaction, hence one batch to cut into requests of <= 300,000 tokens.
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute(
            "INSERT INTO articles (id, title, body) SELECT g, 'Big ' || g, "
            "(SELECT string_agg('word' || (g * 7919 + i) % 100003 || ' ' || md5((g * i)::text), "
            "' ') FROM generate_series(1, 1700) i) FROM generate_series(1, 60) g"
        )
        deployment.wait_caught_up(timeout=180)
        log = endpoint.request_log
        assert endpoint.violations == []
        assert all(entry.status == 200 for entry in log)
        assert sum(entry.inputs for entry in log) == len(deployment.sink_rows()) >= 60 * 3
        assert max(entry.tokens for entry in log) <= 300_000
        assert sum(entry.tokens for entry in log) > 1_000_000  # so several requests were needed
        assert max(count_tokens([r["content"] for r in deployment.sink_rows()])) <= 8191
        assert_in_step(deployment)
    finally:
        assert process.stop() == 0, process.output
