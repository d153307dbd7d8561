"""Embedding providers: turn texts into vectors, surviving a flaky service.

`EmbeddingProvider` is what the rest of wal2vec talks to. `OpenAIProvider` speaks to any
OpenAI-compatible `/embeddings` endpoint (OpenAI, Azure, vLLM, TEI, Ollama...), or to a fleet
of them serving the same model, through the official `openai` client with its own retries
turned off: we run our own loop so every HTTP attempt reaches the metrics callback and the
backoff is exactly `RetryPolicy`'s. Inputs are cut into requests within the API's limits on
inputs and tokens per request, counted with the model's tokenizer.

Which endpoint takes a request is `Fleet`'s decision (`cdc.embedding.fleet`): the one in
rotation with the fewest requests in flight; one that fails transiently leaves the rotation
for a backoff and comes back through a probe. A single `base_url` is a fleet of one.

What can go wrong, and what the caller sees:

- transient failures (429, 408, 409, 5xx, timeouts, refused connections) take the endpoint
  out of rotation and the request goes at once to another endpoint in rotation, at no cost
  to its attempts. Only while every endpoint is out does a failure count as an attempt; the
  request then waits for the first endpoint whose backoff ends, and when the attempts run out
  `EmbeddingUnavailable` (retriable) is raised and the caller retries the whole batch later,
  so nothing is lost;
- the service refusing us (401, 403, 404...) raises `EmbeddingUnavailable(retriable=False)`,
  from any endpoint of a fleet: a key or model one server refuses is a configuration to fix,
  not a server to route around (the message names the endpoint);
- the service rejecting some *inputs* for good (400/422/413) is narrowed down by bisection to the
  single inputs at fault, which come back in `EmbeddingResult.errors` while the others get vectors;
- an answer that cannot be used (not JSON, a proxy's HTML page with any status but 413, the
  wrong shape, fewer or more vectors than inputs, NaN for every input: see
  `cdc.embedding.answers`) is transient like a 5xx;
- NaN or infinity for some inputs of an answer whose other vectors are fine is retried with
  backoff (the endpoint answered, so it stays in rotation); still there when the attempts run
  out, it is those inputs' fault: they come back in `EmbeddingResult.errors`;
- vectors of the wrong size raise `ConfigError`: storing them would poison the sink.

Up to `concurrency` requests are in flight at once on each endpoint, over all `embed` calls of
one provider (the snapshot's writers share it with the stream). Each endpoint has its own
rate-limit gate (the service's rate-limit headers and `Retry-After`); the optional
tokens-per-minute budget is the account's, so it is one, shared by all endpoints.

Messages name the endpoint's host, never the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from cdc.embedding.answers import (
    Answer,
    DimensionMismatch,
    MalformedAnswer,
    parse_answer,
)
from cdc.embedding.fleet import BackIn, Change, Fleet, StillOut, TakenOut, Ticket, endpoint_labels
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

# How each HTTP attempt ended (`ok`, the HTTP status, `timeout`, `connection`, `malformed`),
# how long it took, and the endpoint (host[:port]) it went to.
RequestObserver = Callable[[str, float, str], None]
# An endpoint (host[:port]) in rotation (True) or out of it (False); every endpoint is
# reported in rotation once, when the provider is made.
EndpointObserver = Callable[[str, bool], None]


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


@dataclass(frozen=True)
class _Failure:
    """A transient failure of one endpoint: what went wrong, and the wait it asked for."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True)
class _Service:
    """One endpoint: its name (host[:port]), its client and how its errors read."""

    name: str
    client: openai.AsyncOpenAI
    errors: ServiceErrors


class OpenAIProvider:
    """An `EmbeddingProvider` for any OpenAI-compatible embeddings endpoint, or a fleet of
    them serving the same model (`base_url` a list)."""

    def __init__(
        self,
        *,
        model: str,
        dimensions: int,
        api_key: str | None,
        base_url: str | Sequence[str] | None,
        max_batch_inputs: int = MAX_BATCH_INPUTS,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        timeout: float = 60.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        send_dimensions: bool | None = None,
        on_request: RequestObserver | None = None,
        tokenizer: Tokenizer | None = None,
        concurrency: int = 4,
        tokens_per_minute: int | None = None,
        api_version: str | None = None,
        on_throttle: Callable[[float], None] | None = None,
        on_endpoint: EndpointObserver | None = None,
    ) -> None:
        _check_limits(max_batch_inputs, max_batch_tokens, dimensions, concurrency)
        self.model = model
        self.dimensions = dimensions
        self.tokenizer = tokenizer or Tokenizer.for_model(model)
        self._max_batch = max_batch_inputs
        self._max_tokens = max_batch_tokens
        self._retry = retry
        self._on_request = on_request
        self._on_throttle = on_throttle
        self._on_endpoint = on_endpoint
        # The account's budget, one for every endpoint; the servers' own limits are per endpoint.
        self._budget = RateGate(tokens_per_minute, time.monotonic())
        if send_dimensions is None:
            # Only OpenAI's text-embedding-3 family takes `dimensions`; other servers reject it.
            send_dimensions = model.startswith("text-embedding-3")
        self._send_dimensions = send_dimensions
        urls = _urls(base_url)
        key = _resolve_key(api_key, urls[0], azure=api_version is not None)
        # Remembered only to scrub it from messages; a placeholder is no secret.
        self._secret = key if key != _PLACEHOLDER_KEY else None
        clients = [_client(key, url, api_version, timeout) for url in urls]
        names = endpoint_labels([str(client.base_url) for client in clients])
        self._services = [
            _Service(name, client, ServiceErrors(name, model, self._secret))
            for name, client in zip(names, clients, strict=True)
        ]
        self._fleet = Fleet(names, concurrency, retry, time.monotonic())
        # Set (and replaced) whenever a place may have freed: requests waiting for one look again.
        self._opened = asyncio.Event()
        if len(names) > 1:
            logger.info(
                "embedding fleet of %d endpoints (%s), up to %d requests in flight on each",
                len(names),
                ", ".join(names),
                concurrency,
            )
        for name in names:
            if on_endpoint is not None:
                on_endpoint(name, True)

    @property
    def endpoints(self) -> list[str]:
        """The endpoints' names (host[:port]), in configuration order."""
        return self._fleet.names

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for service in self._services:
            await service.client.close()

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
        """One request, sent again while failures are transient.

        A failed endpoint leaves the rotation and the request goes at once to another one, at
        no cost to its attempts; only while every endpoint is out does a failure count, and
        the request waits for the first to come back. Every HTTP failure counts towards a
        bound of `max_attempts` per endpoint, so a request that fails everywhere in turn
        still ends. An answer holding NaN or infinity for some inputs is retried with backoff
        (the endpoint answered: it stays in rotation); when the attempts run out it ends as
        a `_Partial`: those inputs go to the dead letters.
        """
        attempt = failures = 0
        most_failures = self._retry.max_attempts * len(self._services)
        while True:
            tally.requests += 1
            last = attempt + 1 >= self._retry.max_attempts
            ticket = await self._place(tokens, may_probe=failures == 0)
            outcome = await self._attempt(ticket, batch, last)
            name = self._services[ticket.index].name
            if isinstance(outcome, _Failure):
                failures += 1
                if self._fleet.any_up() and failures < most_failures:
                    logger.debug(
                        "embedding request to %s failed (%s): sent on", name, outcome.reason
                    )
                    continue
                attempt += 1
                self._wait_for_a_comeback(attempt, name, outcome.reason)
                continue
            if isinstance(outcome, Rejected):
                return outcome
            if outcome.faults and not last:
                attempt += 1
                failure = f"NaN or infinite values in {len(outcome.faults)} embeddings"
                await self._back_off(attempt, name, failure)
                continue
            tally.tokens += outcome.tokens
            if outcome.faults:
                return _Partial(outcome.vectors, outcome.faults)
            return [vector for vector in outcome.vectors if vector is not None]

    async def _place(self, tokens: int, *, may_probe: bool) -> Ticket:
        """Wait for the token budget, then for a place on an endpoint (a probe only if
        `may_probe`, or when every endpoint is out)."""
        await self._admit(tokens)
        while True:
            now = time.monotonic()
            ticket = self._fleet.acquire(now, may_probe=may_probe)
            if ticket is not None:
                return ticket
            wait, throttled = self._fleet.next_opening(now), self._fleet.throttled(now)
            opened = self._opened
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(opened.wait(), wait)
            if throttled and self._on_throttle is not None:
                self._on_throttle(time.monotonic() - now)

    async def _attempt(
        self, ticket: Ticket, batch: list[str], last: bool
    ) -> Answer | Rejected | _Failure:
        """One HTTP request on the ticket's endpoint; the fleet learns how it went."""
        try:
            outcome = await self._send(ticket.index, batch, last)
        except BaseException:
            # Cancelled, or refused for good: no verdict on the endpoint, its place is free.
            self._fleet.release(ticket)
            self._wake()
            raise
        now = time.monotonic()
        change: Change | None
        if isinstance(outcome, _Failure):
            change = self._fleet.failed(ticket, now, random.random(), outcome.retry_after)
        else:
            change = self._fleet.succeeded(ticket, now)
        self._wake()
        if change is not None:
            self._report(change, outcome)
        return outcome

    async def _send(self, index: int, batch: list[str], last: bool) -> Answer | Rejected | _Failure:
        """Send `batch` to endpoint `index`: its answer, a rejection of the inputs, or a
        transient failure; a refusal for good raises."""
        service = self._services[index]
        started = time.monotonic()
        try:
            raw = await service.client.embeddings.with_raw_response.create(**self._params(batch))
        except openai.APIStatusError as exc:
            self._observe(service.name, str(exc.status_code), started)
            rejected = service.errors.settle_status(exc)
            if rejected is not None:
                return rejected
            retry_after = parse_retry_after(exc.response.headers, time.time())
            self._hold(index, exc, retry_after)
            return _Failure(status_failure(exc), retry_after)
        except openai.APITimeoutError:
            self._observe(service.name, "timeout", started)
            return _Failure("timeout")
        except openai.APIConnectionError as exc:
            self._observe(service.name, "connection", started)
            return _Failure(f"connection error ({cause(exc)})")
        self._fleet.observe(index, ServerLimits.from_headers(raw.headers), time.monotonic())
        answer = self._read(service, raw.content, raw.headers.get("content-type"), len(batch))
        if not isinstance(answer, Answer):
            self._observe(service.name, "malformed", started)
            return _Failure(f"a malformed answer: {answer}")
        self._observe(service.name, "malformed" if answer.faults and not last else "ok", started)
        return answer

    def _read(
        self, service: _Service, body: bytes, content_type: str | None, expected: int
    ) -> Answer | str:
        """The answer's vectors, or what is wrong with it; wrong-sized vectors raise."""
        try:
            return parse_answer(body, content_type, expected, self.dimensions)
        except MalformedAnswer as malformed:
            return service.errors.scrub(str(malformed))
        except DimensionMismatch as mismatch:
            raise ConfigError(
                f"the embedding service at {service.name} returned {mismatch.size}-dimensional "
                f"vectors for model {self.model!r}, but embedding.dimensions is "
                f"{self.dimensions}: embedding.dimensions must match the model"
            ) from None

    async def _admit(self, tokens: int) -> None:
        """Wait until the account's token budget lets a request go."""
        while (wait := self._budget.wait_for(tokens, time.monotonic())) > 0:
            logger.debug("embedding requests held %.2fs by the rate limits", wait)
            if self._on_throttle is not None:
                self._on_throttle(wait)
            await asyncio.sleep(wait)
        self._budget.take(tokens, time.monotonic())

    def _hold(self, index: int, exc: openai.APIStatusError, retry_after: float | None) -> None:
        """A 429 speaks for the whole endpoint: hold every request to it, not only this one."""
        now = time.monotonic()
        self._fleet.observe(index, ServerLimits.from_headers(exc.response.headers), now)
        if exc.status_code == 429 and retry_after is not None:
            self._fleet.pause(index, min(retry_after, RETRY_AFTER_HARD_CAP), now)

    def _wake(self) -> None:
        """A place may have freed: every request waiting for one looks again."""
        self._opened.set()
        self._opened = asyncio.Event()

    def _report(self, change: Change, outcome: Answer | Rejected | _Failure) -> None:
        """Log an endpoint leaving or rejoining the rotation (a fleet of one says it in its
        retries), and tell the metrics."""
        fleet = len(self._services) > 1
        if isinstance(change, TakenOut):
            if fleet:
                logger.warning(
                    "embedding endpoint %s is out of rotation (%s), %d of %d left; "
                    "probing it again in %.1fs",
                    change.name,
                    outcome.reason if isinstance(outcome, _Failure) else "failed",
                    change.up,
                    len(self._services),
                    change.backoff,
                )
            self._tell(change.name, up=False)
        elif isinstance(change, StillOut):
            if fleet:
                logger.info(
                    "embedding endpoint %s still failing; probing it again in %.1fs",
                    change.name,
                    change.backoff,
                )
        elif isinstance(change, BackIn):
            if fleet:
                logger.info(
                    "embedding endpoint %s is back in rotation after %.1fs out",
                    change.name,
                    change.out_for,
                )
            self._tell(change.name, up=True)

    def _tell(self, name: str, *, up: bool) -> None:
        if self._on_endpoint is not None:
            self._on_endpoint(name, up)

    def _params(self, batch: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "input": batch,
            "encoding_format": "base64",
        }
        if self._send_dimensions:
            params["dimensions"] = self.dimensions
        return params

    def _observe(self, endpoint: str, label: str, started: float) -> None:
        if self._on_request is not None:
            self._on_request(label, time.monotonic() - started, endpoint)

    def _wait_for_a_comeback(self, attempt: int, name: str, failure: str) -> None:
        """Every endpoint is out: give up when the attempts are spent, else say how long
        until the first one may be probed (`_place` waits for it)."""
        if attempt >= self._retry.max_attempts:
            raise EmbeddingUnavailable(self._exhausted(attempt, name, failure))
        wait = self._fleet.next_opening(time.monotonic()) or 0.0
        self._log_retry(name, failure, attempt, wait)

    def _log_retry(self, name: str, failure: str, attempt: int, wait: float) -> None:
        logger.warning(
            "embedding request to %s failed (%s), attempt %d of %d; retrying in %.2fs",
            name,
            failure,
            attempt,
            self._retry.max_attempts,
            wait,
        )

    def _exhausted(self, attempt: int, name: str, failure: str) -> str:
        if len(self._services) == 1:
            return (
                f"the embedding service at {name} kept failing: {attempt} attempts, "
                f"the last one: {failure}"
            )
        return (
            f"every embedding service ({', '.join(self._fleet.names)}) kept failing: "
            f"{attempt} attempts with all of them out of rotation, the last one at {name}: "
            f"{failure}"
        )

    async def _back_off(self, attempt: int, name: str, failure: str) -> None:
        """The endpoint answered, but not well enough to keep: wait, then ask again."""
        wait = self._retry.delay(attempt, None, random.random())
        self._log_retry(name, failure, attempt, wait)
        await asyncio.sleep(wait)


def _check_limits(
    max_batch_inputs: int, max_batch_tokens: int, dimensions: int, concurrency: int
) -> None:
    if not 1 <= max_batch_inputs <= MAX_BATCH_INPUTS:
        raise ConfigError(
            f"embedding.batch_size must be between 1 and {MAX_BATCH_INPUTS}, not {max_batch_inputs}"
        )
    if max_batch_tokens < 1:
        raise ConfigError(f"the token limit per request must be positive, not {max_batch_tokens}")
    if dimensions < 1:
        raise ConfigError(f"embedding.dimensions must be positive, not {dimensions}")
    if concurrency < 1:
        raise ConfigError(f"embedding.concurrency must be at least 1, not {concurrency}")


def _urls(base_url: str | Sequence[str] | None) -> list[str | None]:
    """The endpoints' URLs; [None] for OpenAI's own API."""
    if base_url is None or isinstance(base_url, str):
        return [base_url]
    if not base_url:
        raise ConfigError("embedding.base_url is an empty list: name at least one endpoint")
    return list(base_url)


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
