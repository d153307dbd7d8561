"""Embedding providers: the protocol the rest of wal2vec talks to, and the pure parts of
calling a service: the retry policy, `Retry-After`, cutting inputs into requests, decoding.

`EmbeddingProvider` is implemented by `OpenAIProvider` (`cdc.embedding.openai_compat`, any
OpenAI-compatible endpoint) and the local model (`cdc.embedding.local`); `make_provider`
(`cdc.embedding.factory`) picks one from the configuration.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]

# The OpenAI API refuses more inputs than this in one request...
MAX_BATCH_INPUTS = 2048
# ...and more tokens than this, summed over the inputs.
MAX_BATCH_TOKENS = 300_000
# A server asking us to wait longer than the backoff cap is still obeyed, up to this.
RETRY_AFTER_HARD_CAP = 120.0


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
