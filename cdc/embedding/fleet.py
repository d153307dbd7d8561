"""An embedding fleet: which of several endpoints serving the same model takes the next request.

`embedding.base_url` may list endpoints (vLLM, TEI or Ollama replicas, or several Azure
resources with the same deployment); a single endpoint is a fleet of one, kept by the same
rules. `Fleet` is pure: the caller passes the clock and the randomness, sends the requests and
does the waiting (`cdc.embedding.openai_compat`).

- Least in flight: a request goes to the endpoint in rotation with the fewest requests in
  flight, ties taken round-robin, each endpoint holding at most `capacity` at once
  (`embedding.concurrency` is per endpoint: each server has its own), none while its own
  rate-limit gate holds it (its `x-ratelimit-*` headers and `Retry-After`).
- A circuit breaker per endpoint: a transient failure (refused connection, 5xx, 429, timeout,
  an unusable answer) takes it out of rotation for a backoff, exponential with full jitter
  (the retry policy's, so capped at its `max_delay`, and never shorter than a `Retry-After`).
  When that is over, one request goes as a probe: its success brings the endpoint back, its
  failure takes it out again for twice as long. The failures of requests that were already in
  flight when it was taken out say nothing new and change nothing.

Endpoints are named by host[:port] only (`endpoint_labels`), for logs and metric labels: a
URL's path or user part may hold a secret, and a label must stay low-cardinality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cdc.embedding.providers import RetryPolicy
from cdc.embedding.ratelimit import RateGate, ServerLimits


@dataclass(frozen=True, slots=True)
class Ticket:
    """A request's place on endpoint `index`; `probe` when it is the one request let through
    to an endpoint out of rotation."""

    index: int
    probe: bool = False


@dataclass(frozen=True, slots=True)
class TakenOut:
    """Endpoint `name` failed and is out of rotation; a probe may go in `backoff` seconds."""

    name: str
    backoff: float
    up: int  # endpoints still in rotation


@dataclass(frozen=True, slots=True)
class StillOut:
    """The probe of endpoint `name` failed; the next may go in `backoff` seconds."""

    name: str
    backoff: float


@dataclass(frozen=True, slots=True)
class BackIn:
    """The probe of endpoint `name` succeeded: it is in rotation again after `out_for` s."""

    name: str
    out_for: float


Change = TakenOut | StillOut | BackIn


@dataclass(slots=True)
class _Endpoint:
    name: str
    gate: RateGate
    in_flight: int = 0
    # Failures since it last served: the exponent of its backoff.
    failures: int = 0
    out_since: float | None = None  # None: in rotation
    back_at: float = 0.0  # while out: when a probe may go
    probing: bool = False

    @property
    def up(self) -> bool:
        return self.out_since is None


class Fleet:
    """Where each request goes, and which endpoints are in rotation."""

    def __init__(
        self, names: Sequence[str], capacity: int, backoff: RetryPolicy, now: float
    ) -> None:
        if not names:
            raise ValueError("a fleet needs at least one endpoint")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._endpoints = [_Endpoint(name, RateGate(None, now)) for name in names]
        self._capacity = capacity
        self._backoff = backoff
        self._cursor = 0  # where the round-robin among equally loaded endpoints resumes

    @property
    def names(self) -> list[str]:
        return [endpoint.name for endpoint in self._endpoints]

    def name(self, index: int) -> str:
        return self._endpoints[index].name

    def in_flight(self, index: int) -> int:
        return self._endpoints[index].in_flight

    def is_up(self, index: int) -> bool:
        return self._endpoints[index].up

    def any_up(self) -> bool:
        """Whether an endpoint is in rotation (if busy): a failed request need not wait."""
        return any(endpoint.up for endpoint in self._endpoints)

    # -- placing requests ------------------------------------------------------------------

    def acquire(self, now: float, *, may_probe: bool = True) -> Ticket | None:
        """A place for one request now, or None: see `next_opening` for how long to wait.

        A due probe goes first: it is the only way an endpoint comes back, and one request
        is all it risks. A request that has just failed passes `may_probe=False` while an
        endpoint is in rotation: it goes on to a healthy one, not to another failing one.
        """
        probe = self._due_probe(now) if may_probe or not self.any_up() else None
        if probe is not None:
            endpoint = self._endpoints[probe]
            endpoint.probing = True
            endpoint.in_flight += 1
            return Ticket(probe, probe=True)
        ready = [i for i, e in enumerate(self._endpoints) if e.up and self._has_room(e, now)]
        if not ready:
            return None
        fewest = min(self._endpoints[i].in_flight for i in ready)
        count = len(self._endpoints)
        index = min(
            (i for i in ready if self._endpoints[i].in_flight == fewest),
            key=lambda i: (i - self._cursor) % count,
        )
        self._cursor = (index + 1) % count
        self._endpoints[index].in_flight += 1
        return Ticket(index)

    def next_opening(self, now: float) -> float | None:
        """Seconds until waiting alone may free a place (a backoff or a rate-limit pause
        ends); None when only a request finishing can (every endpoint is full or probed)."""
        waits = [w for e in self._endpoints if (w := self._ready_in(e, now)) is not None]
        return min(waits) if waits else None

    def throttled(self, now: float) -> bool:
        """When no place is free: whether rate limits are part of why (an endpoint in
        rotation with room is held back by its rate-limit gate), so the wait is throttling."""
        return any(
            e.up and e.in_flight < self._capacity and e.gate.wait_for(0, now) > 0
            for e in self._endpoints
        )

    # -- what happened -----------------------------------------------------------------------

    def release(self, ticket: Ticket) -> None:
        """The request ended without a verdict on the endpoint (cancelled, or refused for
        good): its place is free, a probe may go again."""
        endpoint = self._endpoints[ticket.index]
        endpoint.in_flight -= 1
        if ticket.probe:
            endpoint.probing = False

    def succeeded(self, ticket: Ticket, now: float) -> BackIn | None:
        """The endpoint answered; a probe's answer brings it back into rotation."""
        self.release(ticket)
        endpoint = self._endpoints[ticket.index]
        if endpoint.up:
            endpoint.failures = 0
            return None
        if not ticket.probe:
            return None  # an answer to a request sent before it failed proves little
        out_for = now - (endpoint.out_since or now)
        endpoint.out_since, endpoint.failures = None, 0
        return BackIn(endpoint.name, out_for)

    def failed(
        self, ticket: Ticket, now: float, rand: float, retry_after: float | None = None
    ) -> TakenOut | StillOut | None:
        """The endpoint failed transiently: out of rotation (again) for a growing backoff;
        `rand` in [0, 1) is the jitter, `retry_after` the server's own wish, a floor."""
        self.release(ticket)
        endpoint = self._endpoints[ticket.index]
        if not endpoint.up and not ticket.probe:
            # Sent before it was taken out: no news, but a later Retry-After still holds.
            if retry_after is not None:
                endpoint.back_at = max(endpoint.back_at, now + retry_after)
            return None
        endpoint.failures += 1
        backoff = self._backoff.delay(endpoint.failures, retry_after, rand)
        endpoint.back_at = now + backoff
        if endpoint.up:
            endpoint.out_since = now
            return TakenOut(endpoint.name, backoff, sum(e.up for e in self._endpoints))
        return StillOut(endpoint.name, backoff)

    def observe(self, index: int, limits: ServerLimits, now: float) -> None:
        """An answer's rate-limit headers: a spent window holds this endpoint alone."""
        self._endpoints[index].gate.observe(limits, now)

    def pause(self, index: int, seconds: float, now: float) -> None:
        """Hold this endpoint for `seconds` (a 429's `Retry-After`)."""
        self._endpoints[index].gate.pause(seconds, now)

    # -- rules -------------------------------------------------------------------------------

    def _has_room(self, endpoint: _Endpoint, now: float) -> bool:
        return endpoint.in_flight < self._capacity and endpoint.gate.wait_for(0, now) <= 0

    def _due_probe(self, now: float) -> int | None:
        """The out-of-rotation endpoint whose backoff ended first, if any may be probed."""
        due = [
            i
            for i, e in enumerate(self._endpoints)
            if not e.up and not e.probing and e.back_at <= now and self._has_room(e, now)
        ]
        return min(due, key=lambda i: self._endpoints[i].back_at) if due else None

    def _ready_in(self, endpoint: _Endpoint, now: float) -> float | None:
        if endpoint.in_flight >= self._capacity or endpoint.probing:
            return None
        wait = endpoint.gate.wait_for(0, now)
        if not endpoint.up:
            wait = max(wait, endpoint.back_at - now)
        return max(wait, 0.0)


def endpoint_name(url: str) -> str:
    """host[:port] of a URL, leaving out any user:password@, path and query (and the rest
    of a URL without a host: it may be anything)."""
    parts = urlsplit(url)
    host = parts.hostname or "unknown-host"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def endpoint_labels(urls: Sequence[str]) -> list[str]:
    """Each endpoint's name: host[:port], with `#position` added where two share it (one
    gateway routing paths to different servers), so every endpoint has a series of its own."""
    names = [endpoint_name(url) for url in urls]
    return [
        f"{name}#{index}" if names.count(name) > 1 else name for index, name in enumerate(names)
    ]
