"""Prometheus metrics, held in one object handed to the parts, and the HTTP endpoint.

Each `Metrics` owns its registry (no module-level state), so several pipelines or tests never
share counters. Labels stay low-cardinality: table, op, status, reason.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# How long the pipeline may go without a heartbeat before /healthz reports it stuck.
STUCK_AFTER_SECONDS = 120.0


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.up = Gauge("cdc_up", "1 while the streamer is connected and streaming", registry=r)
        self.replication_lag_bytes = Gauge(
            "cdc_replication_lag_bytes",
            "Server WAL position minus the confirmed flush LSN",
            registry=r,
        )
        self.replication_lag_seconds = Gauge(
            "cdc_replication_lag_seconds",
            "Now minus the commit time of the oldest change not yet in the sink",
            registry=r,
        )
        self.confirmed_lsn = Gauge(
            "cdc_confirmed_lsn", "Confirmed flush LSN as a number", registry=r
        )
        self.slot_retained_wal_bytes = Gauge(
            "cdc_slot_retained_wal_bytes",
            "Server WAL position minus the slot's restart_lsn",
            registry=r,
        )
        self.changes = Counter("cdc_changes", "Row changes received", ["table", "op"], registry=r)
        self.embeddings = Counter("cdc_embeddings", "Chunks embedded", ["table"], registry=r)
        self.embeddings_skipped = Counter(
            "cdc_embeddings_skipped",
            "Rows not embedded, by reason (unchanged content, empty content)",
            ["table", "reason"],
            registry=r,
        )
        self.embedding_requests = Counter(
            "cdc_embedding_requests", "Embedding API requests", ["status"], registry=r
        )
        self.embedding_tokens = Counter(
            "cdc_embedding_tokens", "Tokens reported by the embedding API", registry=r
        )
        self.embedding_request_seconds = Histogram(
            "cdc_embedding_request_seconds",
            "Embedding API request latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.vectors_written = Counter(
            "cdc_vectors_written", "Sink rows written or deleted", ["table", "op"], registry=r
        )
        self.buffer_rows = Gauge("cdc_buffer_rows", "Rows waiting in the buffer", registry=r)
        self.flush_seconds = Histogram(
            "cdc_flush_seconds",
            "Time to embed and write one batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "cdc_dead_letters", "Rows the embedding API rejected for good", ["table"], registry=r
        )
        self.snapshot_rows = Counter(
            "cdc_snapshot_rows", "Rows read by snapshots", ["table"], registry=r
        )

    def record_request(self, status: str, seconds: float) -> None:
        self.embedding_requests.labels(status=status).inc()
        self.embedding_request_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Health:
    """What /healthz and /readyz report; the pipeline updates it."""

    streaming: bool = False
    # Whether this process ever reached streaming: after that, outages are waited out.
    streaming_seen: bool = False
    snapshot_done: bool = False
    last_heartbeat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last_heartbeat = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_heartbeat < STUCK_AFTER_SECONDS

    @property
    def ready(self) -> bool:
        return self.streaming and self.snapshot_done


async def serve_http(metrics: Metrics, health: Health, host: str, port: int) -> asyncio.Server:
    """Serve /metrics, /healthz and /readyz on the event loop the pipeline runs on."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = request.split(b" ", 2)[1].decode(errors="replace").split("?")[0]
            status, body, kind = _respond(path, metrics, health)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def _respond(path: str, metrics: Metrics, health: Health) -> tuple[str, bytes, str]:
    if path == "/metrics":
        return "200 OK", metrics.render(), CONTENT_TYPE_LATEST
    if path == "/healthz":
        ok = health.alive
        return (
            ("200 OK" if ok else "503 Service Unavailable"),
            b"ok\n" if ok else b"stuck\n",
            ("text/plain"),
        )
    if path == "/readyz":
        ok = health.ready
        return (
            ("200 OK" if ok else "503 Service Unavailable"),
            b"ready\n" if ok else (b"not ready\n"),
            "text/plain",
        )
    return "404 Not Found", b"not found\n", "text/plain"
