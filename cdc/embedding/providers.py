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
import base64
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import openai

from cdc.embedding.answers import (
    Answer,
    DimensionMismatch,
    MalformedAnswer,
    describe_body,
    is_html,
    parse_answer,
)
from cdc.embedding.ratelimit import RateGate, ServerLimits
from cdc.embedding.tokens import Tokenizer
from cdc.errors import ConfigError, EmbeddingUnavailable

logger = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]

# The OpenAI API refuses more inputs than this in one request...
MAX_BATCH_INPUTS = 2048
# ...and more tokens than this, summed over the inputs.
MAX_BATCH_TOKENS = 300_000
# A server asking us to wait longer than the backoff cap is still obeyed, up to this.
RETRY_AFTER_HARD_CAP = 120.0
# Sent when the endpoint is local and needs no key: the client insists on having one.
_PLACEHOLDER_KEY = "no-key-required"
# Service messages land in logs and the dead-letter table: keep them readable.
_MESSAGE_LIMIT = 500

_TRANSIENT_STATUSES = frozenset({408, 409, 429})
# The service rejected something in the request itself: bisect to find the inputs at fault.
_REJECTION_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True)
class EmbeddingResult:
    """The outcome of one `embed` call, one slot per input text, in input order."""

    vectors: list[Vector | None]
    errors: dict[int, str]
    tokens: int
    requests: int


class EmbeddingProvider(Protocol):
    """Anything that turns texts into `dimensions`-long vectors of `model`."""

    model: str
    dimensions: int

    async def embed(
        self, texts: Sequence[str], token_counts: Sequence[int] | None = None
    ) -> EmbeddingResult:
        """Vectors for `texts`; `token_counts`, when the caller already counted them, saves
        the provider counting again (providers without token limits ignore it)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter. Pure: the caller supplies the randomness and waits."""

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("base_delay and max_delay must not be negative")

    def delay(self, attempt: int, retry_after: float | None, rand: float) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based) before the next one.

        `rand` in [0, 1) spreads clients apart (full jitter) so they do not retry in lockstep.
        A server's `retry_after` is a floor, honoured even above `max_delay` up to
        `RETRY_AFTER_HARD_CAP`, so a misbehaving server cannot park us for hours.
        """
        # Clamping the exponent keeps 2**n a float far from overflow on absurd attempt counts.
        exponent = min(max(attempt - 1, 0), 64)
        ceiling = min(self.max_delay, self.base_delay * 2.0**exponent)
        backoff = min(max(rand, 0.0), 1.0) * ceiling
        if retry_after is None or math.isnan(retry_after):
            return backoff
        return max(backoff, min(max(retry_after, 0.0), RETRY_AFTER_HARD_CAP))


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """The wait a response asks for, in seconds, or None when it asks for none.

    Reads `retry-after-ms` (OpenAI, Azure) first, then `Retry-After` as seconds or an HTTP-date
    (compared with `now`, seconds since the epoch). Header names must be looked up
    case-insensitively, as httpx headers are; plain dicts must use lower-case keys.
    """
    millis = _parse_float(headers.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000.0, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _parse_float(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


def _parse_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def plan_requests(token_counts: Sequence[int], max_inputs: int, max_tokens: int) -> list[range]:
    """Cut inputs (given by their token counts) into consecutive requests within both limits.

    A single input over `max_tokens` still gets a request of its own: the service decides.
    """
    spans: list[range] = []
    start, tokens = 0, 0
    for index, cost in enumerate(token_counts):
        if index > start and (index - start >= max_inputs or tokens + cost > max_tokens):
            spans.append(range(start, index))
            start, tokens = index, 0
        tokens += cost
    if start < len(token_counts):
        spans.append(range(start, len(token_counts)))
    return spans


def decode_embedding(raw: object) -> Vector:
    """One embedding from the wire: base64 little-endian float32 in bulk, or a JSON float list.

    A base64 answer becomes a read-only view of the decoded bytes: no copy, no per-float work.
    """
    if isinstance(raw, str):
        return np.frombuffer(base64.b64decode(raw, validate=True), dtype="<f4")
    return np.asarray(raw, dtype=np.float32)


@dataclass
class _Tally:
    """What one `embed` call has gathered so far."""

    vectors: list[Vector | None]
    errors: dict[int, str] = field(default_factory=dict)
    tokens: int = 0
    requests: int = 0


@dataclass(frozen=True)
class _Rejected:
    """The service refused a request because of (some of) its inputs."""

    message: str


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
        retry: RetryPolicy = RetryPolicy(),
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
        outcome: list[Vector] | _Partial | _Rejected | None = None
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
            assert isinstance(outcome, _Rejected)
            tally.errors[lo] = outcome.message
            return
        mid = (lo + hi) // 2
        errors_before = len(tally.errors)
        await self._embed_range(texts, counts, lo, mid, tally, known_bad=False)
        left_clean = len(tally.errors) == errors_before
        await self._embed_range(texts, counts, mid, hi, tally, known_bad=left_clean)

    async def _request(
        self, batch: list[str], tokens: int, tally: _Tally
    ) -> list[Vector] | _Partial | _Rejected:
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
                rejected = self._settle_status(exc)
                if rejected is not None:
                    return rejected
                failure = _status_failure(exc)
                retry_after = parse_retry_after(exc.response.headers, time.time())
                self._hold_everyone(exc, retry_after)
            except openai.APITimeoutError:
                self._observe("timeout", started)
                failure, retry_after = "timeout", None
            except openai.APIConnectionError as exc:
                self._observe("connection", started)
                failure, retry_after = f"connection error ({_cause(exc)})", None
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
            return self._scrub(str(malformed))
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

    def _settle_status(self, exc: openai.APIStatusError) -> _Rejected | None:
        """Classify an HTTP error: None to retry, a rejection to bisect, or raise."""
        status = exc.status_code
        if status in _TRANSIENT_STATUSES or status >= 500:
            return None
        if status != 413 and _html_error(exc):
            # A proxy's or gateway's page, not the service's verdict on our inputs or key.
            return None
        detail = self._service_message(exc)
        if status in _REJECTION_STATUSES:
            param = _error_param(exc)
            if param is not None and "input" not in param:
                # The request itself is wrong (e.g. `dimensions` for a model without them):
                # every row would be rejected, so this is configuration, not bad rows.
                raise ConfigError(
                    f"the embedding service at {self._endpoint} rejected parameter {param!r} "
                    f"for model {self.model!r}: {detail}; check embedding.model and "
                    "embedding.dimensions"
                )
            return _Rejected(detail)
        raise EmbeddingUnavailable(self._refusal(status, detail), retriable=False)

    def _refusal(self, status: int, detail: str) -> str:
        where = f"the embedding service at {self._endpoint}"
        if status == 401:
            # The service's own text may quote part of the key; say nothing of it.
            return (
                f"{where} refused the API key (HTTP 401): check embedding.api_key or OPENAI_API_KEY"
            )
        if status == 403:
            return f"{where} denied access (HTTP 403): {detail}"
        if status == 404:
            return (
                f"{where} does not know model {self.model!r} or the endpoint (HTTP 404): {detail}; "
                "check embedding.model and embedding.base_url"
            )
        return f"{where} refused the request (HTTP {status}): {detail}"

    def _service_message(self, exc: openai.APIStatusError) -> str:
        body = exc.body
        text = body.get("message") if isinstance(body, Mapping) else None
        if not isinstance(text, str) or not text:
            text = f"HTTP {exc.status_code}"
        return self._scrub(text)[:_MESSAGE_LIMIT]

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text


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


def _html_error(exc: openai.APIStatusError) -> bool:
    return is_html(exc.response.headers.get("content-type"), exc.response.content)


def _status_failure(exc: openai.APIStatusError) -> str:
    """An HTTP failure for the logs: the status, and the page when a proxy answered."""
    if _html_error(exc):
        page = describe_body(exc.response.headers.get("content-type"), exc.response.content)
        return f"HTTP {exc.status_code} with {page}"
    return f"HTTP {exc.status_code}"


def _error_param(exc: openai.APIStatusError) -> str | None:
    param = exc.body.get("param") if isinstance(exc.body, Mapping) else None
    return param if isinstance(param, str) and param else None


def _cause(exc: BaseException) -> str:
    """The innermost reason for a connection failure, e.g. ConnectError, without any URL."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return type(exc).__name__
