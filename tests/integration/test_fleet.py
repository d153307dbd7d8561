"""`cdc run` against an embedding fleet: three fake endpoints on loopback ports of their own.

Under a write workload one endpoint starts answering 500s and another is stopped outright; the
third carries on alone. Nothing may be lost, stale or dead-lettered, the stream must not stall,
and /metrics and the log must say which endpoint is out, by host and port only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import (
    DIMENSIONS,
    CdcProcess,
    Deployment,
    Workload,
    assert_in_step,
    free_port,
    scrape,
    wait_until,
)

SECRET = "sk-test-secret-key-do-not-print"  # the harness's configured key
# Injected failures "until the end": far more requests than the test sends.
FOREVER = 100_000


@pytest.fixture
def fleet(endpoint: FakeOpenAIServer) -> Iterator[list[FakeOpenAIServer]]:
    """The deployment's own endpoint and two more, each stopped by this test."""
    others = [FakeOpenAIServer(dimensions=DIMENSIONS) for _ in range(2)]
    for server in others:
        server.start()
    try:
        yield [endpoint, *others]
    finally:
        for server in others:
            server.stop()


def name(server: FakeOpenAIServer) -> str:
    return f"127.0.0.1:{server.port}"


def ok_requests(port: int, server: FakeOpenAIServer) -> float:
    value = scrape(port, "cdc_embedding_requests_total", f'endpoint="{name(server)}",status="ok"')
    return value or 0.0


def served(server: FakeOpenAIServer, count: int, process: CdcProcess) -> bool:
    """Whether `server` answered `count` requests with vectors; raises if `cdc run` exited."""
    process.assert_running()
    return sum(entry.status == 200 for entry in server.request_log) >= count


def more_writes(workload: Workload, count: int) -> None:
    written = workload.transactions
    wait_until(lambda: workload.transactions >= written + count, what=f"{count} more writes")


def test_one_endpoint_killed_and_one_failing_cost_nothing(
    deployment: Deployment, fleet: list[FakeOpenAIServer]
) -> None:
    healthy, flaky, victim = fleet
    for server in fleet:
        server.latency = 0.02
    port = free_port()
    deployment.extra = {
        "embedding": {"base_url": [s.url for s in fleet], "concurrency": 2},
        "metrics": {"port": port},
        "snapshot": {"batch_rows": 50},
    }
    deployment.execute(
        "INSERT INTO articles (id, title, body) "
        "SELECT g, 'existing ' || g, 'body ' || g FROM generate_series(1000, 1399) g"
    )
    process = deployment.start()
    deployment.wait_ready()
    # The snapshot's eight batches went all over the fleet.
    assert all(server.requests >= 2 for server in fleet), [s.requests for s in fleet]

    workload = Workload(deployment, seed=13)
    workload.start()
    try:
        for server in fleet:
            before = server.requests
            wait_until(
                lambda s=server, n=before: served(s, n + 3, process),
                what=f"{name(server)} serving the stream",
            )
        flaky.fail_next(FOREVER, status=500)
        more_writes(workload, 20)
        victim.stop()
        stopped_at = healthy.requests
        more_writes(workload, 40)
        wait_until(
            lambda: served(healthy, stopped_at + 10, process), what="the healthy one carrying on"
        )
    finally:
        workload.stop()

    deployment.wait_caught_up()
    assert assert_in_step(deployment) > 0
    assert deployment.dead_letters() == []
    # Out of rotation, both of them, and said so by host and port.
    for server, up in ((healthy, 1.0), (flaky, 0.0), (victim, 0.0)):
        gauge = scrape(port, "cdc_embedding_endpoint_up", f'endpoint="{name(server)}"')
        assert gauge == up, (name(server), gauge)
    # The failing one was only probed (backoff doubling from 0.5 s), never sent the stream.
    failed = sum(entry.status == 500 for entry in flaky.request_log)
    assert 1 <= failed < healthy.requests - stopped_at, (failed, healthy.requests)
    assert ok_requests(port, healthy) >= ok_requests(port, flaky) > 0
    code = process.stop()
    output = process.output
    assert code == 0, output
    for server in (flaky, victim):
        assert f"embedding endpoint {name(server)} is out of rotation" in output
    assert SECRET not in output
    assert not [server.url for server in fleet if server.url in output]  # hosts, not URLs
