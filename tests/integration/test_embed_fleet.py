"""OpenAIProvider over a fleet of fake endpoints, over real HTTP with the real client.

Each endpoint is a `FakeOpenAIServer` on a 127.0.0.1 port of its own, started and stopped by
the test. What is checked is what a fleet promises: requests spread by fewest in flight, a
failing endpoint costs its requests no attempts while another is in rotation, it is probed
back in, rate limits hold one endpoint only, the token budget holds them all, and endpoints
are named by host and port, never by a path or a key.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from cdc.config import settings_from
from cdc.embedding.factory import make_provider as make_configured_provider
from cdc.embedding.openai_compat import OpenAIProvider
from cdc.embedding.providers import EmbeddingResult, RetryPolicy
from cdc.errors import EmbeddingUnavailable
from cdc.metrics import Metrics
from tests.fakes.openai_server import FakeOpenAIServer, count_tokens
from tests.harness import wait_until
from tests.integration.test_embed_provider import (
    API_KEY,
    DIMS,
    FAST,
    Attempts,
    assert_vectors,
    closed_port,
)


@pytest.fixture
def fleet() -> Iterator[list[FakeOpenAIServer]]:
    """Three endpoints of the test's own."""
    servers = [FakeOpenAIServer(dimensions=DIMS).start() for _ in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


class Rotation:
    """The provider's on_endpoint callback: every (endpoint, in rotation) it reported."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []

    def __call__(self, endpoint: str, up: bool) -> None:
        self.events.append((endpoint, up))


def name(server: FakeOpenAIServer) -> str:
    return f"127.0.0.1:{server.port}"


def provider(urls: list[str], **overrides: Any) -> OpenAIProvider:
    options: dict[str, Any] = {
        "model": "text-embedding-3-small",
        "dimensions": DIMS,
        "api_key": API_KEY,
        "base_url": urls,
        "retry": FAST,
        "max_batch_inputs": 1,
    }
    options.update(overrides)
    return OpenAIProvider(**options)


def embed_each(p: OpenAIProvider, texts: list[str]) -> list[EmbeddingResult]:
    """Each text in an `embed` call of its own, all at once, as the snapshot's writers and
    the stream call one provider."""

    async def go() -> list[EmbeddingResult]:
        try:
            return await asyncio.gather(*(p.embed([text]) for text in texts))
        finally:
            await p.aclose()

    return asyncio.run(go())


def embed(p: OpenAIProvider, texts: list[str]) -> EmbeddingResult:
    async def go() -> EmbeddingResult:
        try:
            return await p.embed(texts)
        finally:
            await p.aclose()

    return asyncio.run(go())


def texts(count: int) -> list[str]:
    return [f"fleet text {i}" for i in range(count)]


def test_requests_spread_by_fewest_in_flight_within_each_endpoints_concurrency(
    fleet: list[FakeOpenAIServer],
) -> None:
    for server in fleet:
        server.latency = 0.2
    attempts = Attempts()
    batch = texts(12)
    result = embed(provider([s.url for s in fleet], concurrency=2, on_request=attempts), batch)
    assert_vectors(result, batch)
    # Two in flight on each (concurrency is per endpoint), so six at once in all.
    assert [server.max_in_flight for server in fleet] == [2, 2, 2]
    assert [server.requests for server in fleet] == [4, 4, 4]
    assert sorted(set(attempts.endpoints)) == sorted(name(s) for s in fleet)


def test_a_dead_endpoint_costs_no_attempts_while_others_serve(
    fleet: list[FakeOpenAIServer],
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    rotation, attempts = Rotation(), Attempts()
    # One attempt per request: any failure counted against a request would raise.
    p = provider(
        [dead, fleet[0].url, fleet[1].url],
        retry=RetryPolicy(max_attempts=1, base_delay=0.5, max_delay=0.5),
        on_endpoint=rotation,
        on_request=attempts,
    )
    batch = texts(20)
    results = embed_each(p, batch)
    for text, result in zip(batch, results, strict=True):
        assert_vectors(result, [text])
    dead_name = urlsplit(dead).netloc
    assert (dead_name, False) in rotation.events
    assert attempts.labels.count("connection") >= 1
    assert fleet[0].requests + fleet[1].requests == 20
    assert min(fleet[0].requests, fleet[1].requests) >= 5


def test_an_endpoint_answering_500s_is_left_out_then_probed_back_in(
    fleet: list[FakeOpenAIServer], caplog: pytest.LogCaptureFixture
) -> None:
    flaky = fleet[1]
    flaky.fail_next(3, status=500)
    rotation = Rotation()
    caplog.set_level(logging.INFO, logger="cdc.embedding.openai_compat")
    batch = texts(40)
    # Base 50 ms: the flaky endpoint is out for a while, then probed (three failures in all).
    policy = RetryPolicy(max_attempts=2, base_delay=0.05, max_delay=0.05)
    for server in fleet:
        server.latency = 0.02
    results = embed_each(
        provider([s.url for s in fleet], concurrency=1, retry=policy, on_endpoint=rotation),
        batch,
    )
    for text, result in zip(batch, results, strict=True):
        assert_vectors(result, [text])
    statuses = [entry.status for entry in flaky.request_log]
    assert statuses[:3] == [500, 500, 500] and statuses[-1] == 200
    flaky_events = [up for endpoint, up in rotation.events if endpoint == name(flaky)]
    assert flaky_events == [True, False, True]  # made, taken out, probed back in
    messages = caplog.text
    assert f"embedding endpoint {name(flaky)} is out of rotation" in messages
    assert f"embedding endpoint {name(flaky)} is back in rotation" in messages


def test_a_429_holds_that_endpoint_and_work_goes_to_the_others(
    fleet: list[FakeOpenAIServer],
) -> None:
    # The first request goes to endpoint 0, which asks for a minute: nobody waits for it.
    fleet[0].fail_next(1, status=429, retry_after=60)
    batch = texts(10)
    started = time.monotonic()
    results = embed_each(provider([s.url for s in fleet], concurrency=1), batch)
    assert time.monotonic() - started < 30
    for text, result in zip(batch, results, strict=True):
        assert_vectors(result, [text])
    assert fleet[0].requests == 1
    assert fleet[1].requests + fleet[2].requests == 10


def test_the_tokens_per_minute_budget_is_one_for_the_whole_fleet(
    fleet: list[FakeOpenAIServer],
) -> None:
    # 60 tokens a minute: the first request spends it all, so the second waits about 2 s for
    # two tokens even though a second endpoint is idle (the budget is the account's).
    long_text = " ".join(["word"] * 60)
    batch = [long_text, "two words"]
    assert count_tokens(batch) == [60, 2]
    held: list[float] = []
    result = embed(
        provider(
            [fleet[0].url, fleet[1].url],
            concurrency=1,
            tokens_per_minute=60,
            on_throttle=held.append,
        ),
        batch,
    )
    assert_vectors(result, batch)
    assert 1.0 < sum(held) <= 2.1


def test_when_every_endpoint_is_out_the_attempts_run_out() -> None:
    urls = [f"http://127.0.0.1:{closed_port()}/v1" for _ in range(3)]
    attempts = Attempts()
    p = provider(urls, retry=RetryPolicy(3, base_delay=0.001, max_delay=0.002), on_request=attempts)
    with pytest.raises(EmbeddingUnavailable) as caught:
        embed(p, ["a"])
    assert caught.value.retriable
    # Free on the first two (another was in rotation), then three counted attempts.
    assert attempts.labels == ["connection"] * 5
    message = str(caught.value)
    assert "every embedding service" in message and "3 attempts" in message
    for url in urls:
        assert url.split("/")[2] in message
    assert API_KEY not in message


def test_a_refusal_for_good_from_any_endpoint_stops_everything(
    fleet: list[FakeOpenAIServer],
) -> None:
    # The first request goes to endpoint 0. A key or model refused is configuration to fix,
    # not a server to route around.
    fleet[0].fail_next(1, status=401)
    with pytest.raises(EmbeddingUnavailable) as caught:
        embed(provider([s.url for s in fleet]), ["a"])
    assert not caught.value.retriable
    assert name(fleet[0]) in str(caught.value)
    assert API_KEY not in str(caught.value)


def test_an_endpoint_stopped_midway_costs_nothing(fleet: list[FakeOpenAIServer]) -> None:
    for server in fleet:
        server.latency = 0.05
    victim = fleet[2]
    rotation = Rotation()
    p = provider(
        [s.url for s in fleet],
        concurrency=1,
        retry=RetryPolicy(max_attempts=1, base_delay=0.05, max_delay=0.2),
        on_endpoint=rotation,
    )
    batch = texts(60)

    def stop_midway() -> None:
        wait_until(lambda: victim.requests >= 3, 60, "the victim served a few")
        victim.stop()

    stopper = threading.Thread(target=stop_midway)
    stopper.start()
    try:
        results = embed_each(p, batch)
    finally:
        stopper.join()
    for text, result in zip(batch, results, strict=True):
        assert_vectors(result, [text])
    assert (name(victim), False) in rotation.events
    assert fleet[0].requests >= 10 and fleet[1].requests >= 10


def test_endpoint_labels_carry_no_path_and_no_key(
    fleet: list[FakeOpenAIServer], caplog: pytest.LogCaptureFixture
) -> None:
    secret_path = "route/sk-path-secret-0000"
    first, second = fleet[0], fleet[1]
    urls = [
        f"http://127.0.0.1:{first.port}/{secret_path}/v1",
        f"http://wal2vec:sk-userinfo-secret@127.0.0.1:{second.port}/v1",
    ]
    settings = settings_from(
        {
            "source": {"dsn": "postgresql://cdc@127.0.0.1:1/app"},
            "embedding": {
                "model": "text-embedding-3-small",
                "dimensions": DIMS,
                "base_url": urls,
                "api_key": API_KEY,
                "batch_size": 1,
            },
            "tables": [{"table": "public.articles", "columns": ["title"]}],
        }
    )
    metrics = Metrics()
    caplog.set_level(logging.DEBUG, logger="cdc")
    second.fail_next(1, status=500)
    p = make_configured_provider(settings, metrics)
    assert isinstance(p, OpenAIProvider)
    results = embed_each(p, texts(8))
    assert all(r.errors == {} for r in results)
    body = metrics.render().decode()
    labels = {
        line.split('endpoint="', 1)[1].split('"', 1)[0]
        for line in body.splitlines()
        if 'endpoint="' in line
    }
    assert labels == {name(first), name(second)}
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cdc."))
    assert "is out of rotation" in ours  # the endpoint that answered 500 was named
    for secret in ("sk-path-secret", "sk-userinfo-secret", API_KEY, "route"):
        assert secret not in body
        assert secret not in ours
    assert f'cdc_embedding_endpoint_up{{endpoint="{name(first)}"}} 1.0' in body
