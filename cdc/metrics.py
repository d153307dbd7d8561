"""Prometheus metrics, held in one object handed to the parts, and the HTTP endpoint.

Each `Metrics` owns its registry (no module-level state), so several pipelines or tests never
share counters. Labels stay low-cardinality: table, op, status, reason; `cdc_info` carries the
version, slot and model once.

Lag is computed when scraped (see `Positions`). In bytes, from two views of the server: the
streamer's, from the frames it reads and the LSN it confirms, and the slot monitor's, from the
server itself over its own connection (`cdc.pipeline.monitor`). Either alone goes stale: the
streamer's while its reader waits on a full buffer or between sessions, the monitor's between
polls. In seconds, from the commit time of the oldest pending change, so it grows between
heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from cdc.config import Settings
from cdc.replication.lsn import ZERO, Lsn

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000)
# How long the streamer may go without a heartbeat before /healthz reports it stuck.
STUCK_AFTER_SECONDS = 120.0
# Values of the label sets known up front: their series exist from the start at 0, so
# `increase()` and `rate()` see the first change instead of missing it.
CHANGE_OPS = ("insert", "update", "delete", "truncate")
WRITE_OPS = ("upsert", "metadata", "delete")
SKIP_REASONS = ("unchanged", "empty")
REQUEST_OUTCOMES = ("ok", "400", "429", "500", "502", "503", "504", "timeout", "connection")
# pg_replication_slots.wal_status values, plus "missing" when the slot does not exist.
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost", "missing")
# Request outcomes the provider retries: HTTP 408, 409, 429, 5xx, timeouts, dropped connections.
_RETRIED_HTTP = frozenset({"408", "409", "429"})
_RETRIED_OTHER = frozenset({"timeout", "connection", "malformed"})


class Positions:
    """WAL positions as last reported by the streamer and by the slot monitor.

    Every one is a lower bound: the server is at least where either saw it, and at least what
    either knows was confirmed is confirmed (the server persists the slot's confirmed flush LSN
    a little after the streamer sends it). The lag is the best of each.
    """

    def __init__(self) -> None:
        self.stream_server = ZERO
        self.stream_confirmed = ZERO
        self.server = ZERO
        self.slot_confirmed = ZERO
        # Unix time of the commit of the oldest change not yet in the sink; None: caught up.
        self.oldest_pending: float | None = None

    @property
    def server_lsn(self) -> Lsn:
        return max(self.stream_server, self.server)

    @property
    def confirmed_lsn(self) -> Lsn:
        return max(self.stream_confirmed, self.slot_confirmed)

    @property
    def lag_bytes(self) -> int:
        confirmed = self.confirmed_lsn
        if confirmed == 0:
            return 0  # a new stream before it confirmed anything, the slot not polled yet
        return max(0, self.server_lsn - confirmed)

    def lag_seconds(self, now: float) -> float:
        return 0.0 if self.oldest_pending is None else max(0.0, now - self.oldest_pending)

    def from_stream(self, server: Lsn, confirmed: Lsn, oldest_pending: float | None) -> None:
        """What the streamer saw: the server's WAL end, the LSN it confirmed, and the commit
        time (Unix seconds) of the oldest change not yet in the sink, None when caught up.
        Kept as that commit time, so a scrape between two heartbeats sees the lag grow."""
        self.stream_confirmed = confirmed
        self.stream_server = max(server, confirmed)
        self.oldest_pending = oldest_pending

    def from_slot(self, server: Lsn, confirmed: Lsn | None) -> None:
        """What the slot monitor polled: the server's WAL position and the slot's confirmed
        flush LSN (None when the slot does not exist)."""
        self.server = server
        self.slot_confirmed = confirmed or ZERO


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.positions = p = Positions()
        self.info = Gauge(
            "cdc_info",
            "Always 1; the labels say what runs",
            ["version", "slot", "model"],
            registry=r,
        )
        self.up = Gauge("cdc_up", "1 while the streamer is connected and streaming", registry=r)
        self.leader = Gauge(
            "cdc_leader",
            "1 while this instance leads its slot, 0 while it stands by for another",
            ["slot"],
            registry=r,
        )
        Gauge(
            "cdc_replication_lag_bytes",
            "Server WAL position minus the confirmed flush LSN",
            registry=r,
        ).set_function(lambda: p.lag_bytes)
        Gauge(
            "cdc_replication_lag_seconds",
            "Now minus the commit time of the oldest change not yet in the sink; 0 when caught up",
            registry=r,
        ).set_function(lambda: p.lag_seconds(time.time()))
        Gauge(
            "cdc_confirmed_lsn", "Confirmed flush LSN of the slot as a number", registry=r
        ).set_function(lambda: p.confirmed_lsn)
        Gauge(
            "cdc_server_lsn", "The server's current WAL position as a number", registry=r
        ).set_function(lambda: p.server_lsn)
        self._slot_gauges(r)
        self._stream_counters(r)
        self._embedding_metrics(r)
        self.buffer_rows = Gauge("cdc_buffer_rows", "Rows waiting in the buffer", registry=r)
        self.buffer_max_rows = Gauge(
            "cdc_buffer_max_rows", "The buffer's row limit (buffer.max_rows)", registry=r
        )
        self.batch_rows = Histogram(
            "cdc_batch_rows", "Rows per applied batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.flush_seconds = Histogram(
            "cdc_flush_seconds",
            "Time to embed and write one batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot_rows = Counter(
            "cdc_snapshot_rows", "Rows read by snapshots", ["table"], registry=r
        )
        self.snapshot_rows_estimated = Gauge(
            "cdc_snapshot_rows_estimated",
            "Rows the server estimates each table holds, polled until the initial snapshot is done",
            ["table"],
            registry=r,
        )
        self.snapshot_done = Gauge(
            "cdc_snapshot_done", "1 once the initial snapshot is complete", registry=r
        )

    def _slot_gauges(self, r: CollectorRegistry) -> None:
        self.slot_retained_wal_bytes = Gauge(
            "cdc_slot_retained_wal_bytes",
            "Server WAL position minus the slot's restart_lsn: WAL the server keeps for the slot",
            registry=r,
        )
        self.slot_active = Gauge(
            "cdc_slot_active", "1 while a walsender streams from the slot", registry=r
        )
        self.slot_wal_status = Gauge(
            "cdc_slot_wal_status",
            "1 for the slot's current wal_status (missing: the slot does not exist)",
            ["status"],
            registry=r,
        )
        for status in WAL_STATUSES:
            self.slot_wal_status.labels(status=status)
        self.slot_max_wal_keep_bytes = Gauge(
            "cdc_slot_max_wal_keep_bytes",
            "The server's max_slot_wal_keep_size in bytes; -1 when unlimited",
            registry=r,
        )
        self.slot_failover = Gauge(
            "cdc_slot_failover",
            "1 when the slot is a failover slot, synchronised to standbys (PostgreSQL 17+)",
            registry=r,
        )
        self.slot_failover_synced = Gauge(
            "cdc_slot_failover_synced",
            "1 when a standby named in source.dsn holds a synchronised, valid copy of the slot "
            "(checked with source.failover)",
            registry=r,
        )
        self.slot_poll_errors = Counter(
            "cdc_slot_poll_errors", "Failed polls of the slot's state on the server", registry=r
        )

    def _stream_counters(self, r: CollectorRegistry) -> None:
        self.changes = Counter("cdc_changes", "Row changes received", ["table", "op"], registry=r)
        self.vectors_written = Counter(
            "cdc_vectors_written", "Sink rows written or deleted", ["table", "op"], registry=r
        )
        self.dead_letters = Counter(
            "cdc_dead_letters", "Rows the embedding API rejected for good", ["table"], registry=r
        )
        # Not `cdc_dead_letters`: that is the counter's family name (OpenMetrics and the
        # Prometheus client's parser would merge the two).
        self.dead_letter_rows = Gauge(
            "cdc_dead_letter_rows",
            "Rows waiting in the dead-letter table now, as last polled",
            ["table"],
            registry=r,
        )

    def _embedding_metrics(self, r: CollectorRegistry) -> None:
        self.embeddings = Counter("cdc_embeddings", "Chunks embedded", ["table"], registry=r)
        self.embeddings_skipped = Counter(
            "cdc_embeddings_skipped",
            "Rows not embedded, by reason (unchanged content, empty content)",
            ["table", "reason"],
            registry=r,
        )
        # `endpoint` is host[:port] (never a path or key): one series per endpoint of a fleet.
        self.embedding_requests = Counter(
            "cdc_embedding_requests",
            "Embedding API requests by outcome (ok, the HTTP status, timeout or connection) "
            "and endpoint (host[:port])",
            ["status", "endpoint"],
            registry=r,
        )
        self.embedding_endpoint_up = Gauge(
            "cdc_embedding_endpoint_up",
            "1 while the embedding endpoint (host[:port]) is in rotation, 0 while it is out "
            "after a failure, until a probe succeeds",
            ["endpoint"],
            registry=r,
        )
        self.embedding_retries = Counter(
            "cdc_embedding_retries",
            "Embedding requests that failed transiently (429, 5xx, timeout, connection) and "
            "are retried with backoff while attempts remain",
            registry=r,
        )
        self.embedding_tokens = Counter(
            "cdc_embedding_tokens", "Tokens reported by the embedding API", registry=r
        )
        self.embedding_throttled_seconds = Counter(
            "cdc_embedding_throttled_seconds",
            "Seconds embedding requests were held back by embedding.tokens_per_minute or the "
            "service's rate-limit headers and Retry-After",
            registry=r,
        )
        self.embedding_request_seconds = Histogram(
            "cdc_embedding_request_seconds",
            "Embedding API request latency by endpoint (host[:port])",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.embedding_batch_size = Histogram(
            "cdc_embedding_batch_size",
            "Texts (chunks) per call to the embedding provider",
            buckets=SIZE_BUCKETS,
            registry=r,
        )

    def prepare(self, settings: Settings, version: str) -> None:
        """Label what runs, and create the series whose label values are known up front."""
        self.info.labels(
            version=version, slot=settings.source.slot, model=settings.embedding.model
        ).set(1)
        self.buffer_max_rows.set(settings.buffer.max_rows)
        self.leader.labels(slot=settings.source.slot).set(0)  # a standby until elected
        for table in (t.table for t in settings.tables):
            _touch(self.changes, [{"table": table, "op": op} for op in CHANGE_OPS])
            _touch(self.vectors_written, [{"table": table, "op": op} for op in WRITE_OPS])
            _touch(self.embeddings_skipped, [{"table": table, "reason": r} for r in SKIP_REASONS])
            _touch(self.embeddings, [{"table": table}])
            _touch(self.dead_letters, [{"table": table}])
            self.dead_letter_rows.labels(table=table)
            _touch(self.snapshot_rows, [{"table": table}])

    def record_request(self, status: str, seconds: float, endpoint: str) -> None:
        """The provider's `on_request` callback: one HTTP request, how it ended, and the
        endpoint (host[:port]) it went to."""
        self.embedding_requests.labels(status=status, endpoint=endpoint).inc()
        self.embedding_request_seconds.labels(endpoint=endpoint).observe(seconds)
        if status in _RETRIED_OTHER or status in _RETRIED_HTTP or status.startswith("5"):
            self.embedding_retries.inc()

    def record_endpoint(self, endpoint: str, up: bool) -> None:
        """The provider's `on_endpoint` callback: an embedding endpoint in rotation or out.
        The first report of an endpoint creates its request series at 0."""
        _touch(
            self.embedding_requests,
            [{"status": status, "endpoint": endpoint} for status in REQUEST_OUTCOMES],
        )
        self.embedding_request_seconds.labels(endpoint=endpoint)
        self.embedding_endpoint_up.labels(endpoint=endpoint).set(1 if up else 0)

    def record_slot(self, wal_status: str | None, active: bool) -> None:
        """The slot's state as the server reports it; `wal_status` None when it is missing."""
        current = "missing" if wal_status is None else wal_status
        for status in WAL_STATUSES:
            self.slot_wal_status.labels(status=status).set(1 if status == current else 0)
        self.slot_active.set(1 if active else 0)

    def observe_health(self, health: Health) -> None:
        self.snapshot_done.set(1 if health.snapshot_done else 0)

    def record_dead_letters(self, counts: dict[str, int]) -> None:
        """Rows waiting in the dead-letter table per configured table, from a poll."""
        for table, count in counts.items():
            self.dead_letter_rows.labels(table=table).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _touch(counter: Counter, label_sets: Iterable[dict[str, str]]) -> None:
    for labels in label_sets:
        counter.labels(**labels)


class Health:
    """What /healthz and /readyz report; the pipeline updates it.

    Alive: the event loop answers (it serves these endpoints) and, while streaming, the reader's
    heartbeat is recent. The snapshot and the pauses between sessions have no heartbeat to
    miss; a pod restarted in the middle of a long snapshot would only take it again.
    Ready: streaming, with the initial snapshot done; or, on a standby, connected to the source
    and able to take the lead (a standby is the pod's spare, not a fault: see the README).
    """

    def __init__(self) -> None:
        # "leader" once this instance leads (and while election is off), "standby" while
        # another does; None before the first election.
        self.role: str | None = None
        self.standby_connected = False
        self._streaming = False
        # Whether this process ever reached streaming: after that, outages are waited out.
        self.streaming_seen = False
        # time.monotonic() when the latest stream began; None before the first.
        self.streaming_since: float | None = None
        self.snapshot_done = False
        self.last_heartbeat = time.monotonic()

    @property
    def streaming(self) -> bool:
        return self._streaming

    @streaming.setter
    def streaming(self, value: bool) -> None:
        if value and not self._streaming:
            self.beat()  # the time before streaming began is no silence of the reader
            self.streaming_since = self.last_heartbeat
        self._streaming = value

    def beat(self) -> None:
        self.last_heartbeat = time.monotonic()

    @property
    def alive(self) -> bool:
        return not self._streaming or time.monotonic() - self.last_heartbeat < STUCK_AFTER_SECONDS

    @property
    def ready(self) -> bool:
        if self.role == "standby":
            return self.standby_connected
        return self._streaming and self.snapshot_done

    def stand_by(self, *, connected: bool) -> None:
        self.role = "standby"
        self.standby_connected = connected
        self.streaming = False

    def lead(self) -> None:
        self.role = "leader"
        self.standby_connected = False


async def serve_http(metrics: Metrics, health: Health, host: str, port: int) -> asyncio.Server:
    """Serve /metrics, /healthz and /readyz on the event loop the pipeline runs on."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path = _request_line(request)
            status, body, kind = _respond(path, metrics, health)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def _request_line(request: bytes) -> tuple[str, str]:
    method, target = request.split(b" ", 2)[:2]
    return method.decode(errors="replace"), target.decode(errors="replace").split("?")[0]


def _respond(path: str, metrics: Metrics, health: Health) -> tuple[str, bytes, str]:
    if path == "/metrics":
        metrics.observe_health(health)
        return "200 OK", metrics.render(), CONTENT_TYPE_LATEST
    if path == "/healthz":
        ok = health.alive
        return _plain(ok, b"ok\n" if ok else b"stuck: no heartbeat from the stream reader\n")
    if path == "/readyz":
        ok = health.ready
        if ok:
            return _plain(True, b"ready: standing by\n" if health.role == "standby" else b"ready\n")
        if health.role == "standby":
            return _plain(False, b"not ready: standing by, cannot reach the source\n")
        waiting = b"the initial snapshot" if not health.snapshot_done else b"the stream"
        return _plain(False, b"not ready: waiting for " + waiting + b"\n")
    return "404 Not Found", b"not found\n", "text/plain; charset=utf-8"


def _plain(ok: bool, body: bytes) -> tuple[str, bytes, str]:
    return ("200 OK" if ok else "503 Service Unavailable"), body, "text/plain; charset=utf-8"
