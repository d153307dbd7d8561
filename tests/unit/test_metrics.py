"""Metrics, health and the HTTP endpoint: names, types and labels as Prometheus parses them."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdc.config import Settings
from cdc.metrics import STUCK_AFTER_SECONDS, Health, Metrics, serve_http
from cdc.pipeline.monitor import SlotMonitor, observing, record_sample
from cdc.replication.lsn import Lsn
from cdc.replication.slots import SlotSample

TABLE = "public.articles"
ENDPOINT = "127.0.0.1:8001"

# (family name as the parser gives it, type, label names): interface.md's metrics first.
EXPECTED = [
    ("cdc_replication_lag_bytes", "gauge", set()),
    ("cdc_replication_lag_seconds", "gauge", set()),
    ("cdc_changes", "counter", {"table", "op"}),
    ("cdc_embeddings", "counter", {"table"}),
    ("cdc_embeddings_skipped", "counter", {"table", "reason"}),
    ("cdc_embedding_requests", "counter", {"status", "endpoint"}),
    ("cdc_embedding_tokens", "counter", set()),
    ("cdc_embedding_throttled_seconds", "counter", set()),
    ("cdc_embedding_request_seconds", "histogram", {"endpoint"}),
    ("cdc_vectors_written", "counter", {"table", "op"}),
    ("cdc_buffer_rows", "gauge", set()),
    ("cdc_flush_seconds", "histogram", set()),
    ("cdc_dead_letters", "counter", {"table"}),
    ("cdc_dead_letter_rows", "gauge", {"table"}),
    ("cdc_confirmed_lsn", "gauge", set()),
    ("cdc_slot_retained_wal_bytes", "gauge", set()),
    ("cdc_snapshot_rows", "counter", {"table"}),
    ("cdc_up", "gauge", set()),
    ("cdc_leader", "gauge", {"slot"}),
    # Added for operators.
    ("cdc_info", "gauge", {"version", "slot", "model"}),
    ("cdc_server_lsn", "gauge", set()),
    ("cdc_slot_active", "gauge", set()),
    ("cdc_slot_wal_status", "gauge", {"status"}),
    ("cdc_slot_max_wal_keep_bytes", "gauge", set()),
    ("cdc_slot_failover", "gauge", set()),
    ("cdc_slot_failover_synced", "gauge", set()),
    ("cdc_slot_poll_errors", "counter", set()),
    ("cdc_embedding_retries", "counter", set()),
    ("cdc_embedding_batch_size", "histogram", set()),
    ("cdc_embedding_endpoint_up", "gauge", {"endpoint"}),
    ("cdc_batch_rows", "histogram", set()),
    ("cdc_buffer_max_rows", "gauge", set()),
    ("cdc_snapshot_rows_estimated", "gauge", {"table"}),
    ("cdc_snapshot_done", "gauge", set()),
]


def settings(dsn: str = "postgresql://cdc:hunter2@127.0.0.1:1/app") -> Settings:
    return Settings.model_validate(
        {
            "source": {"dsn": dsn, "slot": "wal2vec_test"},
            "embedding": {"api_key": "sk-unit-secret-key-1234", "model": "m-small"},
            "tables": [{"table": TABLE, "columns": ["title", "body"]}],
            "metrics": {"poll_interval": 0.01},
        }
    )


def families(metrics: Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def exercised() -> Metrics:
    """A Metrics with every labelled family holding at least one series."""
    m = Metrics()
    m.prepare(settings(), "9.9.9")
    m.record_request("ok", 0.2, ENDPOINT)
    m.record_endpoint(ENDPOINT, True)
    m.embedding_tokens.inc(10)
    m.snapshot_rows.labels(table=TABLE).inc(3)
    m.snapshot_rows_estimated.labels(table=TABLE).set(3)
    m.batch_rows.observe(3)
    m.embedding_batch_size.observe(2)
    m.flush_seconds.observe(0.1)
    return m


def test_every_metric_has_its_name_type_and_labels() -> None:
    found = families(exercised())
    for name, kind, labels in EXPECTED:
        assert name in found, f"{name} is not exposed"
        family = found[name]
        assert family.type == kind, f"{name} is a {family.type}, not a {kind}"
        label_names = {k for s in family.samples for k in s.labels if k != "le"}
        assert label_names == labels, f"{name} has labels {label_names}, not {labels}"
    # `cdc run` turns the `_created` series off process-wide (disable_created_metrics).
    exposed = {name for name in found if not name.endswith("_created")}
    unexpected = exposed - {name for name, _, _ in EXPECTED}
    assert not unexpected, f"undocumented metrics: {unexpected}"


def test_prepare_labels_the_run_and_creates_known_series_at_zero() -> None:
    m = Metrics()
    m.prepare(settings(), "9.9.9")
    assert sample(m, "cdc_info", version="9.9.9", slot="wal2vec_test", model="m-small") == 1
    assert sample(m, "cdc_buffer_max_rows") == 20000
    for op in ("insert", "update", "delete", "truncate"):
        assert sample(m, "cdc_changes_total", table=TABLE, op=op) == 0
    for op in ("upsert", "metadata", "delete"):
        assert sample(m, "cdc_vectors_written_total", table=TABLE, op=op) == 0
    assert sample(m, "cdc_dead_letters_total", table=TABLE) == 0
    assert sample(m, "cdc_embeddings_skipped_total", table=TABLE, reason="empty") == 0
    body = m.render().decode()
    assert "hunter2" not in body
    assert "sk-unit-secret" not in body


def test_lag_bytes_from_the_streamer_alone() -> None:
    m = Metrics()
    # as the streamer's heartbeat reports them
    m.positions.from_stream(server=1000 + 500, confirmed=1000, oldest_pending=None)
    assert sample(m, "cdc_replication_lag_bytes") == 500
    assert sample(m, "cdc_confirmed_lsn") == 1000
    assert sample(m, "cdc_server_lsn") == 1500
    m.positions.from_stream(server=1500, confirmed=1500, oldest_pending=None)
    assert sample(m, "cdc_replication_lag_bytes") == 0


def test_lag_bytes_unknown_before_anything_is_confirmed() -> None:
    m = Metrics()
    # a new stream reports 0 until its first confirmation
    m.positions.from_stream(server=28_000_000, confirmed=0, oldest_pending=None)
    assert sample(m, "cdc_replication_lag_bytes") == 0
    assert sample(m, "cdc_server_lsn") == 28_000_000


def test_lag_seconds_grows_between_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr("cdc.metrics.time.time", lambda: now[0])
    m = Metrics()
    assert sample(m, "cdc_replication_lag_seconds") == 0
    m.positions.from_stream(0, 0, oldest_pending=now[0] - 1.5)  # committed 1.5s ago
    assert sample(m, "cdc_replication_lag_seconds") == 1.5
    now[0] += 2
    assert sample(m, "cdc_replication_lag_seconds") == 3.5
    m.positions.from_stream(0, 0, oldest_pending=None)  # caught up
    assert sample(m, "cdc_replication_lag_seconds") == 0


def slot(server: int, confirmed: int | None, restart: int | None, **kw: Any) -> SlotSample:
    values: dict[str, Any] = {
        "server_lsn": Lsn(server),
        "max_wal_keep_bytes": -1,
        "exists": confirmed is not None,
        "active": True,
        "wal_status": "reserved" if confirmed is not None else None,
        "confirmed_flush": None if confirmed is None else Lsn(confirmed),
        "restart_lsn": None if restart is None else Lsn(restart),
    }
    values.update(kw)
    return SlotSample(**values)


def test_lag_bytes_sees_the_server_move_while_the_reader_waits() -> None:
    m = Metrics()
    # the reader saw nothing new: it waits on a full buffer
    m.positions.from_stream(server=1000, confirmed=1000, oldest_pending=None)
    record_sample(m, slot(server=9000, confirmed=1000, restart=800))
    assert sample(m, "cdc_replication_lag_bytes") == 8000
    assert sample(m, "cdc_server_lsn") == 9000
    assert sample(m, "cdc_slot_retained_wal_bytes") == 8200
    # The streamer confirms past the server position of the last poll: caught up at once.
    m.positions.from_stream(server=9100, confirmed=9100, oldest_pending=None)
    assert sample(m, "cdc_replication_lag_bytes") == 0
    assert sample(m, "cdc_confirmed_lsn") == 9100


def test_lag_bytes_right_before_the_streamer_first_confirms() -> None:
    m = Metrics()
    record_sample(m, slot(server=5000, confirmed=4000, restart=3000))
    # A new stream reports confirmed 0 until its first confirmation.
    m.positions.from_stream(server=5000, confirmed=0, oldest_pending=None)
    assert sample(m, "cdc_replication_lag_bytes") == 1000
    assert sample(m, "cdc_confirmed_lsn") == 4000


def test_slot_state_gauges() -> None:
    m = Metrics()
    record_sample(
        m, slot(10, 5, 1, active=False, wal_status="unreserved", max_wal_keep_bytes=1 << 30)
    )
    assert sample(m, "cdc_slot_active") == 0
    assert sample(m, "cdc_slot_max_wal_keep_bytes") == 1 << 30
    statuses = {
        s: sample(m, "cdc_slot_wal_status", status=s)
        for s in ("reserved", "extended", "unreserved", "lost", "missing")
    }
    assert statuses == {"reserved": 0, "extended": 0, "unreserved": 1, "lost": 0, "missing": 0}
    record_sample(m, slot(20, None, None, active=False))
    assert sample(m, "cdc_slot_wal_status", status="missing") == 1
    assert sample(m, "cdc_slot_wal_status", status="unreserved") == 0
    assert sample(m, "cdc_slot_retained_wal_bytes") == 0


@pytest.mark.parametrize(
    ("status", "retried"),
    [("ok", 0), ("429", 1), ("500", 1), ("503", 1), ("timeout", 1), ("connection", 1), ("400", 0)],
)
def test_retries_are_the_transient_failures(status: str, retried: int) -> None:
    m = Metrics()
    m.record_request(status, 0.3, ENDPOINT)
    assert sample(m, "cdc_embedding_requests_total", status=status, endpoint=ENDPOINT) == 1
    assert sample(m, "cdc_embedding_retries_total") == retried
    assert sample(m, "cdc_embedding_request_seconds_count", endpoint=ENDPOINT) == 1


def test_an_endpoint_reported_by_the_provider_has_its_series_from_the_start() -> None:
    m = Metrics()
    m.record_endpoint(ENDPOINT, True)
    for status in ("ok", "500", "429", "timeout", "connection"):
        assert sample(m, "cdc_embedding_requests_total", status=status, endpoint=ENDPOINT) == 0
    assert sample(m, "cdc_embedding_request_seconds_count", endpoint=ENDPOINT) == 0
    assert sample(m, "cdc_embedding_endpoint_up", endpoint=ENDPOINT) == 1
    m.record_endpoint(ENDPOINT, False)
    assert sample(m, "cdc_embedding_endpoint_up", endpoint=ENDPOINT) == 0


def test_health_alive_and_ready() -> None:
    health = Health()
    assert health.alive  # not streaming yet: the snapshot has no heartbeat to miss
    assert not health.ready
    health.last_heartbeat = time.monotonic() - STUCK_AFTER_SECONDS - 1
    assert health.alive
    health.streaming = True  # streaming starts with a fresh heartbeat
    assert health.alive
    assert not health.ready
    health.snapshot_done = True
    assert health.ready
    health.last_heartbeat = time.monotonic() - STUCK_AFTER_SECONDS - 1
    assert not health.alive
    health.beat()
    assert health.alive
    health.streaming = False
    assert not health.ready


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.decode().partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


def test_http_endpoints() -> None:
    async def scenario() -> None:
        metrics, health = Metrics(), Health()
        server = await serve_http(metrics, health, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            assert await http_get(port, "/healthz") == (200, "ok\n")
            status, body = await http_get(port, "/readyz")
            assert (status, body) == (503, "not ready: waiting for the initial snapshot\n")
            health.snapshot_done = True
            assert (await http_get(port, "/readyz"))[0] == 503
            health.streaming = True
            assert await http_get(port, "/readyz") == (200, "ready\n")
            health.last_heartbeat -= STUCK_AFTER_SECONDS + 1
            assert (await http_get(port, "/healthz"))[0] == 503
            status, body = await http_get(port, "/metrics?x=1")
            assert status == 200
            names = {f.name for f in text_string_to_metric_families(body)}
            assert {"cdc_up", "cdc_snapshot_done", "cdc_replication_lag_bytes"} <= names
            assert "cdc_snapshot_done 1.0" in body
            assert await http_get(port, "/metrics", "HEAD") == (200, "")
            assert (await http_get(port, "/nope"))[0] == 404
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_a_failing_poll_is_counted_and_logged_once_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Port 1 on loopback refuses connections at once.
    config = settings("postgresql://cdc:hunter2@127.0.0.1:1/app?connect_timeout=2")
    metrics, health = Metrics(), Health()
    monitor = SlotMonitor(config, metrics, health)

    async def scenario() -> list[bool]:
        return [await monitor.poll(), await monitor.poll()]

    with caplog.at_level(logging.INFO, logger="cdc.pipeline.monitor"):
        assert asyncio.run(scenario()) == [False, False]
    assert sample(metrics, "cdc_slot_poll_errors_total") == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "wal2vec_test" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text


def test_observing_labels_the_run_and_stops_its_poller() -> None:
    config = settings("postgresql://cdc:hunter2@127.0.0.1:1/app?connect_timeout=2")
    metrics, health = Metrics(), Health()

    async def scenario() -> None:
        async with observing(config, metrics, health):
            deadline = time.monotonic() + 10
            while sample(metrics, "cdc_slot_poll_errors_total") == 0:
                assert time.monotonic() < deadline, "the monitor never polled"
                await asyncio.sleep(0.01)
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert "slot-monitor" not in names

    asyncio.run(scenario())
    assert sample(metrics, "cdc_info", version=_version(), slot="wal2vec_test", model="m-small")


def _version() -> str:
    from cdc import __version__

    return __version__
