"""Every answer of the embedding service handled: bodies that are not JSON, a proxy's HTML
pages, the wrong shape or count, NaN. Retried like a 5xx, then exit 3 naming the endpoint and
the fault; NaN for some inputs of an answer, persisting, sends those rows to the dead letters.
Never a traceback, never a wrong vector stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cdc.embedding.answers import NON_FINITE
from cdc.embedding.openai_compat import OpenAIProvider
from cdc.embedding.providers import EmbeddingResult, RetryPolicy
from cdc.errors import EmbeddingUnavailable
from tests.fakes.openai_server import MALFORMATIONS, FakeOpenAIServer, embed_text
from tests.harness import CdcProcess, Deployment, assert_in_step

DIMS = 16
API_KEY = "sk-test-DO-NOT-LEAK-malformed-1234567890"
FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.01)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(dimensions=DIMS) as server:
        yield server


@pytest.fixture
def server(shared_server: FakeOpenAIServer) -> FakeOpenAIServer:
    shared_server.reset()
    return shared_server


def embed(server: FakeOpenAIServer, texts: list[str], **options: Any) -> EmbeddingResult:
    provider = OpenAIProvider(
        model="text-embedding-3-small",
        dimensions=DIMS,
        api_key=API_KEY,
        base_url=server.url,
        retry=FAST,
        **options,
    )

    async def go() -> EmbeddingResult:
        try:
            return await provider.embed(texts)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def assert_right(
    result: EmbeddingResult, texts: list[str], skip: frozenset[int] = frozenset()
) -> None:
    for index, text in enumerate(texts):
        vector = result.vectors[index]
        if index in skip:
            assert vector is None
            continue
        assert vector is not None, f"no vector for input {index}"
        np.testing.assert_array_equal(vector, np.asarray(embed_text(text, DIMS), np.float32))


CASES = [(kind, 200) for kind in MALFORMATIONS] + [("html", 502), ("html", 403), ("html", 400)]


@pytest.mark.parametrize(("kind", "status"), CASES)
def test_a_malformed_answer_is_retried_and_then_the_right_vectors_come(
    server: FakeOpenAIServer, kind: str, status: int
) -> None:
    server.malform_next(2, kind, status)
    texts = ["alpha text", "beta text", "gamma text"]
    result = embed(server, texts)
    assert result.errors == {}
    assert_right(result, texts)
    assert [entry.status for entry in server.request_log] == [status, status, 200]


@pytest.mark.parametrize(("kind", "status"), CASES)
def test_malformed_answers_to_the_end_name_the_endpoint_and_the_fault(
    server: FakeOpenAIServer, kind: str, status: int
) -> None:
    server.malform_next(10, kind, status)
    with pytest.raises(EmbeddingUnavailable) as caught:
        embed(server, ["alpha", "beta"])
    error = caught.value
    assert error.retriable and error.exit_code == 3
    assert server.requests == FAST.max_attempts
    assert f"127.0.0.1:{server.port}" in error.message
    assert f"{FAST.max_attempts} attempts" in error.message
    assert API_KEY not in error.message and "\n" not in error.message
    fault = {
        "truncated": "not JSON",
        "html": "an HTML page",
        "not_json": "not JSON (text/plain",
        "wrong_shape": "without a `data` list",
        "fewer": "1 of 2 embeddings missing",
        "more": "index 2 for 2 inputs",
        "nan": "NaN or infinite",
    }[kind]
    assert fault in error.message, error.message


def test_an_html_413_is_still_bisected_as_too_large(server: FakeOpenAIServer) -> None:
    server.malform_next(1, "html", 413)
    texts = ["one", "two", "three", "four"]
    result = embed(server, texts)
    # The whole, then the left half at once, then the right half one by one (bisection).
    assert result.errors == {} and result.requests == 4
    assert_right(result, texts)


def test_nan_for_one_input_that_persists_is_that_inputs_error(server: FakeOpenAIServer) -> None:
    server.nan_for_inputs_containing("NAN-ME")
    texts = ["fine one", "poison NAN-ME", "fine two"]
    result = embed(server, texts)
    assert result.errors == {1: NON_FINITE}
    assert_right(result, texts, skip=frozenset({1}))
    assert server.requests == FAST.max_attempts  # retried before it was blamed on the input


def test_nan_for_a_lone_input_is_blamed_on_the_service(server: FakeOpenAIServer) -> None:
    server.nan_for_inputs_containing("NAN-ME")
    with pytest.raises(EmbeddingUnavailable, match="NaN or infinite"):
        embed(server, ["alone NAN-ME"])


def test_nan_once_then_right_is_just_a_retry(server: FakeOpenAIServer) -> None:
    server.malform_next(1, "nan")
    texts = ["x y", "y z"]
    result = embed(server, texts)
    assert result.errors == {} and result.requests == 2
    assert_right(result, texts)


# -- through `cdc run` and `cdc search` ------------------------------------------------------


def test_cdc_run_meets_every_malformed_answer_retries_and_ends_in_step(
    deployment: Deployment, endpoint: FakeOpenAIServer, running: CdcProcess
) -> None:
    for number, (kind, status) in enumerate(CASES, start=1):
        endpoint.malform_next(2, kind, status)
        deployment.execute(
            "INSERT INTO articles (id, title, body) VALUES (%s, %s, 'body')",
            (number, f"{kind} {status}"),
        )
        deployment.wait_caught_up()
    assert assert_in_step(deployment) == len(CASES)
    assert deployment.dead_letters() == []
    output = running.output
    assert "Traceback" not in output
    assert "a malformed answer: an HTML page" in output
    assert "HTTP 502 with an HTML page" in output


def test_cdc_run_sends_a_row_that_always_embeds_as_nan_to_the_dead_letters(
    deployment: Deployment, endpoint: FakeOpenAIServer, running: CdcProcess
) -> None:
    endpoint.nan_for_inputs_containing("NAN-ME")
    deployment.execute(
        "INSERT INTO articles (id, title) SELECT g, 'fine ' || g FROM generate_series(1, 9) g "
        "UNION ALL SELECT 99, 'NAN-ME poison'"
    )
    deployment.wait_caught_up()
    [letter] = deployment.dead_letters()
    assert letter["source_id"] == "99" and "NaN" in letter["error"]
    assert assert_in_step(deployment) == 9
    assert "Traceback" not in running.output


def test_cdc_run_exits_3_when_the_answers_stay_malformed(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'snapshot me')")
    deployment.extra = {"embedding": {"max_attempts": 2}}
    endpoint.malform_next(1000, "html")
    process = deployment.start()
    code = process.process.wait(120)
    output = process.output
    assert code == 3, output
    assert "Traceback" not in output
    assert f"the embedding service at 127.0.0.1:{endpoint.port} kept failing" in output
    assert "an HTML page (text/html" in output
    assert "sk-test-secret" not in output
    assert deployment.sink_rows() == []


@pytest.mark.parametrize(("kind", "status"), [("truncated", 200), ("html", 502)])
def test_cdc_search_exits_3_naming_the_fault(
    deployment: Deployment, endpoint: FakeOpenAIServer, kind: str, status: int
) -> None:
    deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'something')")
    process = deployment.start()
    deployment.wait_caught_up()
    assert process.stop() == 0, process.output
    endpoint.malform_next(1000, kind, status)
    result = deployment.cli("search", "something")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"cdc search: the embedding service at 127.0.0.1:{endpoint.port} kept failing: 4 attempts"
    ), result.stderr
    endpoint.reset()
    hits = json.loads(deployment.cli("search", "something", "--json").stdout)
    assert [hit["source_id"] for hit in hits] == ["1"]
