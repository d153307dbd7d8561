"""Embedding providers: turn texts into vectors, surviving a flaky service.

`EmbeddingProvider` is what the rest of wal2vec talks to. `OpenAIProvider` speaks to any
OpenAI-compatible `/embeddings` endpoint (OpenAI, Azure, vLLM, TEI, Ollama...) through the official
`openai` client with its own retries turned off: we run our own loop so every HTTP attempt reaches
the metrics callback and the backoff is exactly `RetryPolicy`'s. Inputs are cut into requests
within the API's limits on inputs and tokens per request, counted with the model's tokenizer.

What can go wrong, and what the caller sees:

- transient failures (429, 408, 409, 5xx, timeouts, refused connections) are retried; when the
  attempts run out `EmbeddingUnavailable` (retriable) is raised and the caller retries the whole
  batch later, so nothing is lost;
- the service refusing us (401, 403, 404...) raises `EmbeddingUnavailable(retriable=False)`;
- the service rejecting some *inputs* for good (400/422/413) is narrowed down by bisection to the
  single inputs at fault, which come back in `EmbeddingResult.errors` while the others get vectors;
- an answer that cannot be used (not JSON, a proxy's HTML page with any status but 413, the
  wrong shape, fewer or more vectors than inputs, NaN for every input: see
  `cdc.embedding.answers`) is transient like a 5xx: retried, then `EmbeddingUnavailable` naming
  the endpoint and the fault;
- NaN or infinity for some inputs of an answer whose other vectors are fine, still there after
  the retries, is those inputs' fault: they come back in `EmbeddingResult.errors`;
- vectors of the wrong size raise `ConfigError`: storing them would poison the sink.

Up to `concurrency` requests are in flight at once, over all `embed` calls of one provider (the
snapshot's writers share it with the stream), each admitted by a `RateGate`: an optional
tokens-per-minute budget and the service's own rate-limit headers and `Retry-After`.

Messages name the endpoint's host, never the API key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai

from cdc.embedding.answers import (
    Answer,
    DimensionMismatch,
    MalformedAnswer,
    parse_answer,
)
from cdc.embedding.providers import (
    MAX_BATCH_INPUTS,
    MAX_BATCH_TOKENS,
    RETRY_AFTER_HARD_CAP,
    EmbeddingResult,
    RetryPolicy,
    Vector,
    parse_retry_after,
    plan_requests,
)
from cdc.embedding.ratelimit import RateGate, ServerLimits
from cdc.embedding.service_errors import Rejected, ServiceErrors, cause, status_failure
from cdc.embedding.tokens import Tokenizer
from cdc.errors import ConfigError, EmbeddingUnavailable

logger = logging.getLogger(__name__)

DEFAULT_RETRY = RetryPolicy()
# Sent when the endpoint is local and needs no key: the client insists on having one.
_PLACEHOLDER_KEY = "no-key-required"


@dataclass
class _Tally:
    """What one `embed` call has gathered so far."""

    vectors: list[Vector | None]
    errors: dict[int, str] = field(default_factory=dict)
    tokens: int = 0
    requests: int = 0


@dataclass(frozen=True)
class _Partial:
    """The service kept answering a request with unusable vectors for some of its inputs
    (NaN, infinity) and good ones for the rest: those inputs are at fault, not the service."""

    vectors: list[Vector | None]
    faults: dict[int, str]


class OpenAIProvider:
    """An `EmbeddingProvider` for any OpenAI-compatible embeddings endpoint."""

    def __init__(
        self,
        *,
        model: str,
        dimensions: int,
        api_key: str | None,
        base_url: str | None,
        max_batch_inputs: int = MAX_BATCH_INPUTS,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        timeout: float = 60.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        send_dimensions: bool | None = None,
        on_request: Callable[[str, float], None] | None = None,
        tokenizer: Tokenizer | None = None,
        concurrency: int = 4,
        tokens_per_minute: int | None = None,
        api_version: str | None = None,
        on_throttle: Callable[[float], None] | None = None,
    ) -> None:
        if not 1 <= max_batch_inputs <= MAX_BATCH_INPUTS:
            raise ConfigError(
                f"embedding.batch_size must be between 1 and {MAX_BATCH_INPUTS}, "
                f"not {max_batch_inputs}"
            )
        if max_batch_tokens < 1:
            raise ConfigError(
                f"the token limit per request must be positive, not {max_batch_tokens}"
            )
        if dimensions < 1:
            raise ConfigError(f"embedding.dimensions must be positive, not {dimensions}")
        if concurrency < 1:
            raise ConfigError(f"embedding.concurrency must be at least 1, not {concurrency}")
        self.model = model
        self.dimensions = dimensions
        self.tokenizer = tokenizer or Tokenizer.for_model(model)
        self._max_batch = max_batch_inputs
        self._max_tokens = max_batch_tokens
        self._retry = retry
        self._on_request = on_request
        self._on_throttle = on_throttle
        self._slots = asyncio.Semaphore(concurrency)
        self._gate = RateGate(tokens_per_minute, time.monotonic())
        if send_dimensions is None:
            # Only OpenAI's text-embedding-3 family takes `dimensions`; other servers reject it.
            send_dimensions = model.startswith("text-embedding-3")
        self._send_dimensions = send_dimensions
        key = _resolve_key(api_key, base_url, azure=api_version is not None)
        # Remembered only to scrub it from messages; a placeholder is no secret.
        self._secret = key if key != _PLACEHOLDER_KEY else None
        self._client = _client(key, base_url, api_version, timeout)
        self._endpoint = _endpoint_name(str(self._client.base_url))
        self._errors = ServiceErrors(self._endpoint, model, self._secret)

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    async def embed(
        self, texts: Sequence[str], token_counts: Sequence[int] | None = None
    ) -> EmbeddingResult:
        batch = list(texts)
        counts = list(token_counts) if token_counts is not None else self.tokenizer.count(batch)
        if len(counts) != len(batch):
            raise ValueError(f"{len(counts)} token counts for {len(batch)} texts")
        tally = _Tally(vectors=[None] * len(batch))
        spans = plan_requests(counts, self._max_batch, self._max_tokens)
        await _all_or_none(
            self._embed_range(batch, counts, span.start, span.stop, tally, known_bad=False)
            for span in spans
        )
        return EmbeddingResult(
            vectors=tally.vectors, errors=tally.errors, tokens=tally.tokens, requests=tally.requests
        )

    async def _embed_range(
        self,
        texts: list[str],
        counts: list[int],
        lo: int,
        hi: int,
        tally: _Tally,
        *,
        known_bad: bool,
    ) -> None:
        """Embed texts[lo:hi], bisecting on rejection down to the single inputs at fault.

        `known_bad` skips sending a range we already know fails: its sibling half went through,
        so the rejection lies here. Single inputs are always sent, for their own error message.
        """
        outcome: list[Vector] | _Partial | Rejected | None = None
        if not known_bad or hi - lo == 1:
            outcome = await self._request(texts[lo:hi], sum(counts[lo:hi]), tally)
            if isinstance(outcome, list):
                tally.vectors[lo:hi] = outcome
                return
            if isinstance(outcome, _Partial):
                tally.vectors[lo:hi] = outcome.vectors
                tally.errors.update({lo + i: message for i, message in outcome.faults.items()})
                return
        if hi - lo == 1:
            assert isinstance(outcome, Rejected)
            tally.errors[lo] = outcome.message
            return
        mid = (lo + hi) // 2
        errors_before = len(tally.errors)
        await self._embed_range(texts, counts, lo, mid, tally, known_bad=False)
        left_clean = len(tally.errors) == errors_before
        await self._embed_range(texts, counts, mid, hi, tally, known_bad=left_clean)

    async def _request(
        self, batch: list[str], tokens: int, tally: _Tally
    ) -> list[Vector] | _Partial | Rejected:
        """One request, retried while failures are transient.

        An answer that cannot be used (not JSON, an HTML page, the wrong shape or count, NaN
        for every input) is a transient failure like a 5xx. One that keeps holding NaN or
        infinity for some inputs, and good vectors for the others, ends as a `_Partial`: those
        inputs go to the dead letters. Vectors of the wrong size raise `ConfigError` at once.
        """
        attempt = 0
        while True:
            attempt += 1
            tally.requests += 1
            try:
                async with self._slots:
                    await self._admit(tokens)
                    started = time.monotonic()
                    raw = await self._client.embeddings.with_raw_response.create(
                        **self._params(batch)
                    )
                    self._gate.observe(ServerLimits.from_headers(raw.headers), time.monotonic())
            except openai.APIStatusError as exc:
                self._observe(str(exc.status_code), started)
                rejected = self._errors.settle_status(exc)
                if rejected is not None:
                    return rejected
                failure = status_failure(exc)
                retry_after = parse_retry_after(exc.response.headers, time.time())
                self._hold_everyone(exc, retry_after)
            except openai.APITimeoutError:
                self._observe("timeout", started)
                failure, retry_after = "timeout", None
            except openai.APIConnectionError as exc:
                self._observe("connection", started)
                failure, retry_after = f"connection error ({cause(exc)})", None
            else:
                answer = self._read(raw.content, raw.headers.get("content-type"), len(batch))
                last = attempt >= self._retry.max_attempts
                if isinstance(answer, Answer) and (not answer.faults or last):
                    self._observe("ok", started)
                    tally.tokens += answer.tokens
                    if answer.faults:
                        return _Partial(answer.vectors, answer.faults)
                    return [vector for vector in answer.vectors if vector is not None]
                self._observe("malformed", started)
                failure = (
                    f"NaN or infinite values in {len(answer.faults)} embeddings"
                    if isinstance(answer, Answer)
                    else f"a malformed answer: {answer}"
                )
                retry_after = None
            await self._back_off(attempt, failure, retry_after)

    def _read(self, body: bytes, content_type: str | None, expected: int) -> Answer | str:
        """The answer's vectors, or what is wrong with it; wrong-sized vectors raise."""
        try:
            return parse_answer(body, content_type, expected, self.dimensions)
        except MalformedAnswer as malformed:
            return self._errors.scrub(str(malformed))
        except DimensionMismatch as mismatch:
            raise ConfigError(
                f"the embedding service at {self._endpoint} returned {mismatch.size}-dimensional "
                f"vectors for model {self.model!r}, but embedding.dimensions is "
                f"{self.dimensions}: embedding.dimensions must match the model"
            ) from None

    async def _admit(self, tokens: int) -> None:
        """Wait until the token budget and the service's limits let a request go."""
        while (wait := self._gate.wait_for(tokens, time.monotonic())) > 0:
            logger.debug("embedding requests held %.2fs by the rate limits", wait)
            if self._on_throttle is not None:
                self._on_throttle(wait)
            await asyncio.sleep(wait)
        self._gate.take(tokens, time.monotonic())

    def _hold_everyone(self, exc: openai.APIStatusError, retry_after: float | None) -> None:
        """A 429 speaks for the whole account: hold every request, not only this one."""
        now = time.monotonic()
        self._gate.observe(ServerLimits.from_headers(exc.response.headers), now)
        if exc.status_code == 429 and retry_after is not None:
            self._gate.pause(min(retry_after, RETRY_AFTER_HARD_CAP), now)

    def _params(self, batch: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "input": batch,
            "encoding_format": "base64",
        }
        if self._send_dimensions:
            params["dimensions"] = self.dimensions
        return params

    def _observe(self, label: str, started: float) -> None:
        if self._on_request is not None:
            self._on_request(label, time.monotonic() - started)

    async def _back_off(self, attempt: int, failure: str, retry_after: float | None) -> None:
        if attempt >= self._retry.max_attempts:
            raise EmbeddingUnavailable(
                f"the embedding service at {self._endpoint} kept failing: {attempt} attempts, "
                f"the last one: {failure}"
            )
        wait = self._retry.delay(attempt, retry_after, random.random())
        logger.warning(
            "embedding request to %s failed (%s), attempt %d of %d; retrying in %.2fs",
            self._endpoint,
            failure,
            attempt,
            self._retry.max_attempts,
            wait,
        )
        await asyncio.sleep(wait)


async def _all_or_none(jobs: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run `jobs` at once; the first failure cancels the rest and is raised (as itself, not
    wrapped in an exception group, so callers keep catching `EmbeddingUnavailable`)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _client(
    key: str, base_url: str | None, api_version: str | None, timeout: float
) -> openai.AsyncOpenAI:
    """The OpenAI client, or Azure OpenAI's: same API, but `/openai/deployments/{model}/...`
    paths, an `api-version` query parameter and an `api-key` header."""
    if api_version is None:
        return openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
    if base_url is None:
        raise ConfigError(
            "embedding.api_version is set (Azure OpenAI) but embedding.base_url is not: set it "
            "to the resource's endpoint, e.g. https://NAME.openai.azure.com"
        )
    return openai.AsyncAzureOpenAI(
        api_key=key,
        azure_endpoint=base_url,
        api_version=api_version,
        max_retries=0,
        timeout=timeout,
    )


def _resolve_key(api_key: str | None, base_url: str | None, *, azure: bool = False) -> str:
    variable = "AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY"
    key = api_key or os.environ.get(variable)
    if key:
        return key
    if base_url is None or azure:
        raise ConfigError(
            f"embedding.api_key is not set and neither is {variable}: the "
            f"{'Azure OpenAI' if azure else 'OpenAI'} API needs a key (or set embedding.base_url "
            "to a local OpenAI-compatible server)"
        )
    return _PLACEHOLDER_KEY


def _endpoint_name(url: str) -> str:
    """host[:port] of a URL, leaving out any user:password@ in it."""
    parts = urlsplit(url)
    host = parts.hostname or url
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host
