"""How fast requests may go to the embedding service: a token budget and the server's own word.

Two things slow requests down before the service has to refuse them:

- `embedding.tokens_per_minute`, a budget of our own (a token bucket that refills continuously
  and holds at most one minute's worth), for accounts whose limit is shared with other apps;
- the service's rate-limit headers (`x-ratelimit-remaining-tokens`/`-requests` with their
  `-reset-` durations, as OpenAI and Azure send them), and the `Retry-After` of a 429: when the
  service says the window is spent, every request waits for the reset, not only the one that was
  refused, so concurrent requests do not stampede into a wall of 429s.

`RateGate` is pure: the caller passes the clock and does the waiting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

# "1s", "6m0s", "20ms", "1h2m3.5s": the duration format of OpenAI's reset headers.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in an OpenAI-style duration ("6m0s", "20ms", "1.5s"); a bare number is seconds.

    None for anything else, so a header we do not understand is ignored, never fatal.
    """
    if text is None:
        return None
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one response's rate-limit headers say; None where a header is absent."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> ServerLimits:
        """Read the `x-ratelimit-*` headers (look-ups must be case-insensitive, as httpx's
        are; plain dicts need lower-case keys)."""
        return cls(
            remaining_requests=_parse_int(headers.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_parse_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
            reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        )

    def exhausted_for(self) -> float:
        """Seconds until the spent window resets: 0 while requests and tokens remain."""
        wait = 0.0
        if self.remaining_requests is not None and self.remaining_requests <= 0:
            wait = max(wait, self.reset_requests or 0.0)
        if self.remaining_tokens is not None and self.remaining_tokens <= 0:
            wait = max(wait, self.reset_tokens or 0.0)
        return wait


class RateGate:
    """When the next request may go: the later of the token budget and any server pause."""

    def __init__(self, tokens_per_minute: int | None, now: float) -> None:
        if tokens_per_minute is not None and tokens_per_minute < 1:
            raise ValueError(f"tokens_per_minute must be positive, not {tokens_per_minute}")
        self._capacity = float(tokens_per_minute) if tokens_per_minute else math.inf
        self._per_second = self._capacity / 60.0
        self._tokens = self._capacity
        self._updated = now
        self._paused_until = now

    def wait_for(self, cost: int, now: float) -> float:
        """Seconds before a request of `cost` tokens may go (0: now).

        A request above the whole budget waits for a full bucket and then goes, overdrawing
        it: refusing it forever would stall the stream on one long row.
        """
        self._refill(now)
        pause = max(0.0, self._paused_until - now)
        needed = min(float(cost), self._capacity)
        if self._tokens >= needed:
            return pause
        return max(pause, (needed - self._tokens) / self._per_second)

    def take(self, cost: int, now: float) -> None:
        """Spend `cost` tokens for a request that goes now."""
        self._refill(now)
        self._tokens -= cost

    def pause(self, seconds: float, now: float) -> None:
        """Hold every request for `seconds` (a 429's Retry-After, a spent server window)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, now + seconds)

    def observe(self, limits: ServerLimits, now: float) -> None:
        """Take a response's rate-limit headers into account."""
        self.pause(limits.exhausted_for(), now)

    def _refill(self, now: float) -> None:
        if math.isinf(self._capacity):
            return
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._capacity, self._tokens + elapsed * self._per_second)
        self._updated = now
