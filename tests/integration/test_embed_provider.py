"""OpenAIProvider against the fake OpenAI-compatible server, over real HTTP with the real client.

The server runs on 127.0.0.1 in this process; failures are injected through its controls and
checked through what it recorded. Retry delays are kept tiny so the module runs in seconds.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from cdc.embedding.openai_compat import OpenAIProvider
from cdc.embedding.providers import EmbeddingResult, RetryPolicy, decode_embedding, plan_requests
from cdc.errors import ConfigError, EmbeddingUnavailable
from tests.fakes.openai_server import FakeOpenAIServer, count_tokens, embed_text

DIMS = 16
API_KEY = "sk-test-DO-NOT-LEAK-1234567890"
FAST = RetryPolicy(max_attempts=8, base_delay=0.001, max_delay=0.01)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """A fake endpoint of the test's own: a slow handler of one test never answers into the
    next one's counts."""
    with FakeOpenAIServer(dimensions=DIMS) as fake:
        yield fake


class Attempts:
    """The provider's on_request callback: the label of every HTTP attempt, in order."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.seconds: list[float] = []
        self.endpoints: list[str] = []

    def __call__(self, label: str, seconds: float, endpoint: str) -> None:
        self.labels.append(label)
        self.seconds.append(seconds)
        self.endpoints.append(endpoint)


def make_provider(base_url: str, **overrides: Any) -> OpenAIProvider:
    options: dict[str, Any] = {
        "model": "text-embedding-3-small",
        "dimensions": DIMS,
        "api_key": API_KEY,
        "base_url": base_url,
        "retry": FAST,
    }
    options.update(overrides)
    return OpenAIProvider(**options)


def embed(provider: OpenAIProvider, texts: list[str]) -> EmbeddingResult:
    async def go() -> EmbeddingResult:
        try:
            return await provider.embed(texts)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def expected(text: str, dimensions: int = DIMS) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.asarray(embed_text(text, dimensions), dtype=np.float32)


def assert_vectors(result: EmbeddingResult, texts: list[str], skip: Collection[int] = ()) -> None:
    for index, text in enumerate(texts):
        if index in skip:
            assert result.vectors[index] is None
            continue
        vector = result.vectors[index]
        assert vector is not None, f"no vector for input {index}"
        np.testing.assert_array_equal(vector, expected(text))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the happy path --------------------------------------------------------------------------


def test_batches_split_at_max_batch_inputs_and_keep_order(server: FakeOpenAIServer) -> None:
    texts = [f"text number {i}" for i in range(7)]
    result = embed(make_provider(server.url, max_batch_inputs=3), texts)

    # The three requests go at once, so they may arrive in any order.
    assert sorted(entry.inputs for entry in server.request_log) == [1, 3, 3]
    assert sorted(server.inputs) == sorted(texts)
    assert result.requests == 3
    assert result.errors == {}
    assert_vectors(result, texts)


def test_base64_answers_decode_to_exactly_the_servers_vectors(server: FakeOpenAIServer) -> None:
    texts = ["the cat sat on the mat", "Ünïcødé text ✓", "!!!"]
    result = embed(make_provider(server.url), texts)

    assert [entry.encoding_format for entry in server.request_log] == ["base64"]
    for vector in result.vectors:
        assert vector is not None
        assert vector.dtype == np.float32
        assert vector.shape == (DIMS,)
    assert_vectors(result, texts)
    assert result.tokens == sum(count_tokens(texts))


def test_vectors_follow_the_answers_index_not_its_order(server: FakeOpenAIServer) -> None:
    server.reverse_order = True
    texts = ["first", "second", "third"]
    result = embed(make_provider(server.url), texts)
    assert_vectors(result, texts)


def test_empty_input_makes_no_request(server: FakeOpenAIServer) -> None:
    result = embed(make_provider(server.url), [])
    assert result == EmbeddingResult(vectors=[], errors={}, tokens=0, requests=0)
    assert server.requests == 0


def test_requests_reuse_one_kept_alive_connection(server: FakeOpenAIServer) -> None:
    embed(make_provider(server.url, max_batch_inputs=1, concurrency=1), ["a", "b", "c", "d"])
    assert server.requests == 4
    assert server.connections == 1


def test_no_more_requests_in_flight_than_the_concurrency(server: FakeOpenAIServer) -> None:
    server.latency = 0.2
    texts = [f"text {i}" for i in range(8)]
    started = time.monotonic()
    result = embed(make_provider(server.url, max_batch_inputs=1, concurrency=2), texts)
    elapsed = time.monotonic() - started
    # Two at a time (never three); that they overlapped at all is what max_in_flight shows,
    # without a wall-clock bound a loaded machine could break. Four rounds of two take 0.8 s.
    assert server.max_in_flight == 2
    assert server.connections <= 2
    assert elapsed >= 0.75
    assert_vectors(result, texts)


def test_a_tokens_per_minute_budget_holds_requests_back(server: FakeOpenAIServer) -> None:
    # 60 tokens a minute is one a second: a first request spends the whole budget, the next
    # one (two tokens) is held until two tokens refilled, 2 s after the spend. The hold is that
    # less the first request's own time, which a loaded machine stretches: so the bounds are
    # on the whole (at least 2 s) and on the hold (some, at most 2 s).
    long_text = " ".join(["word"] * 60)
    texts = [long_text, "two words"]
    assert count_tokens(texts) == [60, 2]
    held: list[float] = []
    started = time.monotonic()
    result = embed(
        make_provider(
            server.url,
            max_batch_inputs=1,
            concurrency=1,
            tokens_per_minute=60,
            on_throttle=held.append,
        ),
        texts,
    )
    assert time.monotonic() - started >= 1.9
    assert 0 < sum(held) <= 2.1
    assert server.requests == 2
    assert_vectors(result, texts)


def test_a_spent_rate_limit_window_holds_the_next_request(server: FakeOpenAIServer) -> None:
    server.headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "400ms",
    }
    started = time.monotonic()
    result = embed(make_provider(server.url, max_batch_inputs=1, concurrency=1), ["a", "b"])
    assert time.monotonic() - started >= 0.4
    assert server.requests == 2
    assert_vectors(result, ["a", "b"])


def test_float_lists_are_accepted_too() -> None:
    values = [0.5, -1.25, 3.0]
    vector = decode_embedding(values)
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, np.array(values, dtype=np.float32))


@pytest.mark.parametrize(
    ("model", "send", "sent"),
    [
        ("text-embedding-3-small", None, DIMS),
        ("nomic-embed-text", None, None),
        ("nomic-embed-text", True, DIMS),
        ("text-embedding-3-large", False, None),
    ],
)
def test_dimensions_sent_only_where_the_model_takes_them(
    server: FakeOpenAIServer, model: str, send: bool | None, sent: int | None
) -> None:
    embed(make_provider(server.url, model=model, send_dimensions=send), ["x"])
    assert [(entry.model, entry.dimensions) for entry in server.request_log] == [(model, sent)]


def test_fake_vectors_put_texts_sharing_words_closer() -> None:
    def cosine(a: str, b: str) -> float:
        return float(np.dot(expected(a, 256), expected(b, 256)))

    assert math.isclose(float(np.linalg.norm(expected("any text", 256))), 1.0, rel_tol=1e-6)
    assert cosine("the cat sat on the mat", "a cat on a mat") > cosine(
        "the cat sat on the mat", "quarterly revenue report"
    )
    assert not np.array_equal(expected("Cat mat"), expected("cat mat"))


# -- token-aware batching --------------------------------------------------------------------


def test_plan_requests_respects_both_limits() -> None:
    counts = [10] * 5
    assert plan_requests(counts, max_inputs=2, max_tokens=1000) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
    ]
    assert plan_requests(counts, max_inputs=100, max_tokens=30) == [range(0, 3), range(3, 5)]
    # A text over the token limit alone still goes, by itself.
    assert plan_requests([50, 1], max_inputs=100, max_tokens=30) == [
        range(0, 1),
        range(1, 2),
    ]


def test_requests_stay_under_the_token_limit(server: FakeOpenAIServer) -> None:
    server.max_tokens = 50
    texts = [f"{i:02d} " + "word " * 12 for i in range(10)]
    assert set(count_tokens(texts)) == {14}  # three texts fit in 50 tokens, not four
    result = embed(make_provider(server.url, max_batch_tokens=50), texts)

    assert server.violations == []
    assert all(entry.tokens <= 50 for entry in server.request_log)
    assert len(server.request_log) == 4
    assert_vectors(result, texts)


def test_an_oversized_request_is_bisected_until_it_fits(server: FakeOpenAIServer) -> None:
    server.max_tokens = 50
    texts = [f"{i:02d} " + "word " * 5 for i in range(8)]
    # The provider believes the limit is higher than the server's: the server says 400.
    result = embed(make_provider(server.url), texts)

    assert server.violations != []
    assert result.errors == {}
    assert_vectors(result, texts)


# -- transient failures ----------------------------------------------------------------------


def test_429_waits_at_least_retry_after(server: FakeOpenAIServer) -> None:
    server.fail_next(1, status=429, retry_after=0.2)
    attempts = Attempts()
    started = time.monotonic()
    result = embed(make_provider(server.url, on_request=attempts), ["a", "b"])
    elapsed = time.monotonic() - started

    assert elapsed >= 0.2
    assert attempts.labels == ["429", "ok"]
    assert result.requests == 2
    assert_vectors(result, ["a", "b"])


def test_retry_after_ms_is_honoured(server: FakeOpenAIServer) -> None:
    server.fail_next(1, status=503, retry_after_ms=150)
    started = time.monotonic()
    result = embed(make_provider(server.url), ["a"])

    assert time.monotonic() - started >= 0.15
    assert [entry.status for entry in server.request_log] == [503, 200]
    assert result.vectors[0] is not None


def test_three_500s_then_success(server: FakeOpenAIServer) -> None:
    server.fail_next(3, status=500)
    attempts = Attempts()
    texts = ["one", "two", "three"]
    result = embed(make_provider(server.url, on_request=attempts), texts)

    assert attempts.labels == ["500", "500", "500", "ok"]
    assert all(seconds >= 0 for seconds in attempts.seconds)
    assert result.requests == 4
    assert result.errors == {}
    assert_vectors(result, texts)


def test_exhausted_retries_raise_embedding_unavailable(server: FakeOpenAIServer) -> None:
    server.fail_next(10, status=503)
    provider = make_provider(server.url, retry=RetryPolicy(3, base_delay=0.001, max_delay=0.002))
    with pytest.raises(EmbeddingUnavailable) as caught:
        embed(provider, ["a"])

    assert server.requests == 3
    assert caught.value.retriable
    assert caught.value.exit_code == 3
    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "503" in message
    assert API_KEY not in message


def test_unreachable_endpoint_raises_after_retries() -> None:
    port = closed_port()
    attempts = Attempts()
    provider = make_provider(
        f"http://127.0.0.1:{port}/v1",
        retry=RetryPolicy(3, base_delay=0.001, max_delay=0.002),
        on_request=attempts,
    )
    with pytest.raises(EmbeddingUnavailable) as caught:
        embed(provider, ["a"])

    assert attempts.labels == ["connection"] * 3
    assert caught.value.retriable
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert API_KEY not in str(caught.value)


def test_timeouts_are_retried_then_reported() -> None:
    # A server of its own: its slow handlers must not answer into another test's counts.
    with FakeOpenAIServer(dimensions=DIMS, latency=5.0) as slow:
        attempts = Attempts()
        provider = make_provider(
            slow.url,
            timeout=0.2,
            retry=RetryPolicy(2, base_delay=0.001, max_delay=0.002),
            on_request=attempts,
        )
        with pytest.raises(EmbeddingUnavailable, match="timeout"):
            embed(provider, ["a"])
    assert attempts.labels == ["timeout", "timeout"]


def test_concurrent_requests_are_served_concurrently(server: FakeOpenAIServer) -> None:
    server.latency = 0.3

    async def go() -> list[EmbeddingResult]:
        provider = make_provider(server.url)
        try:
            return await asyncio.gather(*(provider.embed([f"text {i}"]) for i in range(6)))
        finally:
            await provider.aclose()

    results = asyncio.run(go())
    # Served side by side, shown by the server's own count rather than a wall-clock bound.
    assert server.max_in_flight > 1
    assert [entry.status for entry in server.request_log] == [200] * 6
    for i, result in enumerate(results):
        assert_vectors(result, [f"text {i}"])


# -- rejected inputs -------------------------------------------------------------------------


def test_a_poison_input_is_isolated_by_bisection(server: FakeOpenAIServer) -> None:
    server.reject_inputs_containing("POISON")
    texts = [f"row {i}" for i in range(10)]
    texts[6] = "row 6 POISON"
    result = embed(make_provider(server.url), texts)

    assert set(result.errors) == {6}
    assert "content policy" in result.errors[6]
    assert_vectors(result, texts, skip={6})
    # Whole batch, then at most two requests per halving.
    assert result.requests <= 1 + 2 * math.ceil(math.log2(10))
    assert result.requests == server.requests


def test_two_poison_inputs_and_untouched_halves(server: FakeOpenAIServer) -> None:
    server.reject_inputs_containing("POISON")
    texts = [f"row {i}" for i in range(16)]
    texts[1] += " POISON"
    texts[2] += " POISON"
    result = embed(make_provider(server.url), texts)

    assert set(result.errors) == {1, 2}
    assert_vectors(result, texts, skip={1, 2})
    # The clean right half [8, 16) went through as one request and was never split:
    # its rows were sent twice, in the full batch and in that half.
    assert server.inputs.count("row 15") == 2
    assert server.inputs.count("row 8") == 2


def test_a_rejected_single_input(server: FakeOpenAIServer) -> None:
    server.reject_inputs_containing("POISON")
    result = embed(make_provider(server.url), ["POISON alone"])

    assert list(result.errors) == [0]
    assert result.vectors == [None]
    assert result.requests == 1


def test_a_rejected_parameter_is_configuration_not_a_bad_row(server: FakeOpenAIServer) -> None:
    # The fake refuses a non-positive `dimensions` with param="dimensions".
    provider = make_provider(server.url, send_dimensions=True)
    provider.dimensions = 0  # bypass the constructor's check to provoke the server
    with pytest.raises(ConfigError, match="dimensions"):
        embed(provider, ["a", "b"])
    assert server.requests == 1


# -- configuration and refusals --------------------------------------------------------------


def test_wrong_dimensions_is_a_configuration_error(server: FakeOpenAIServer) -> None:
    server.wrong_dimensions = 4
    with pytest.raises(ConfigError) as caught:
        embed(make_provider(server.url), ["a"])

    message = str(caught.value)
    assert "4-dimensional" in message
    assert "text-embedding-3-small" in message
    assert "embedding.dimensions" in message
    assert caught.value.exit_code == 2


def test_bad_key_is_not_retried_and_not_repeated(server: FakeOpenAIServer) -> None:
    server.fail_next(1, status=401)
    with pytest.raises(EmbeddingUnavailable) as caught:
        embed(make_provider(server.url), ["a"])

    assert not caught.value.retriable
    assert server.requests == 1
    assert "API key" in str(caught.value)
    assert API_KEY not in str(caught.value)


def test_service_messages_quoting_the_key_are_scrubbed(server: FakeOpenAIServer) -> None:
    server.fail_next(1, status=403)
    with pytest.raises(EmbeddingUnavailable) as caught:
        embed(make_provider(server.url), ["a"])

    # The fake echoes the key it was sent; the provider must not pass it on.
    assert "may not use this model" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert "***" in str(caught.value)


def test_unknown_model(server: FakeOpenAIServer) -> None:
    server.fail_next(1, status=404)
    with pytest.raises(EmbeddingUnavailable, match="text-embedding-3-small") as caught:
        embed(make_provider(server.url), ["a"])
    assert not caught.value.retriable


def test_no_key_for_the_openai_api_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"embedding\.api_key"):
        OpenAIProvider(model="text-embedding-3-small", dimensions=DIMS, api_key=None, base_url=None)


def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    provider = OpenAIProvider(
        model="text-embedding-3-small", dimensions=DIMS, api_key=None, base_url=None
    )
    asyncio.run(provider.aclose())
    assert provider.model == "text-embedding-3-small"


def test_local_server_needs_no_key(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = embed(make_provider(server.url, api_key=None), ["hello"])
    assert_vectors(result, ["hello"])


def test_batch_size_above_the_api_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        make_provider("http://127.0.0.1:1/v1", max_batch_inputs=4096)


# -- the fake as a process, as benchmarks run it ---------------------------------------------


def test_fake_server_runs_as_a_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.fakes.openai_server", "--dimensions", "8"]
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        try:
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            response = client.embeddings.create(model="m", input=["hello"])
            client.close()
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0
    assert url.startswith("http://127.0.0.1:")
    np.testing.assert_array_equal(
        np.asarray(response.data[0].embedding, dtype=np.float32),
        np.asarray(embed_text("hello", 8), dtype=np.float32),
    )


def test_azure_openai_deployments_are_addressed_the_azure_way(server: FakeOpenAIServer) -> None:
    provider = make_provider(
        server.url.removesuffix("/v1"),
        model="my-embeddings",
        api_version="2024-10-21",
        send_dimensions=True,
    )
    result = embed(provider, ["azure text"])
    assert_vectors(result, ["azure text"])
    [logged] = server.request_log
    assert logged.path == "/openai/deployments/my-embeddings/embeddings?api-version=2024-10-21"
    assert logged.credential == "api-key"
    assert logged.dimensions == DIMS


def test_azure_needs_its_endpoint_and_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"embedding\.base_url"):
        make_provider(None, api_version="2024-10-21")
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        make_provider("http://127.0.0.1:9/", api_key=None, api_version="2024-10-21")
