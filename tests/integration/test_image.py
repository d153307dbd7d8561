"""The container image, run as a sidecar runs it.

The images CI builds with deploy/image/build-offline.sh run with podman on the host network
against an embedded PostgreSQL on 127.0.0.1: WAL2VEC_IMAGE with the test's fake endpoint,
WAL2VEC_LOCAL_IMAGE (the WITH_LOCAL_MODEL variant) with `provider: local`. Each answers its
probes, embeds a row inserted while it runs, and exits 0 on `podman stop` within the shutdown
timeout, as a pod's termination would stop it. A variable that is unset skips its case; once
it is set, a missing podman or image fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend
from tests.harness import (
    DEADLINE,
    Deployment,
    assert_in_step,
    free_port,
    http_status,
    wait_until,
)
from tests.pg import TcpPgServer, start_tcp_server

# The local model's settings, as the `[local]` variant's users write them: no endpoint, no key.
LOCAL_EMBEDDING = {
    "provider": "local",
    "model": "all-MiniLM-L6-v2",
    "dimensions": 384,
    "base_url": None,
    "api_key": None,
}
# This sandbox's runtime needs: runc (crun is not installed) and limits within its own.
PODMAN_RUN = [
    "podman",
    "run",
    "--rm",
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--network",
    "host",
]
SHUTDOWN_TIMEOUT = 10.0
# `podman stop`'s wait before SIGKILL: the pod's terminationGracePeriodSeconds in a test's size.
STOP_GRACE = 30


def image_case(variable: str, embedding: dict[str, Any], case: str) -> Any:
    image = os.environ.get(variable, "")
    skip = pytest.mark.skipif(
        not image,
        reason=f"no image to run: build it with deploy/image/build-offline.sh and set {variable}",
    )
    return pytest.param(image, embedding, id=case, marks=skip)


IMAGES = [
    image_case("WAL2VEC_IMAGE", {}, "endpoint"),
    image_case("WAL2VEC_LOCAL_IMAGE", LOCAL_EMBEDDING, "local-model"),
]


def podman(*args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TcpPgServer]:
    """An embedded PostgreSQL on 127.0.0.1: the container's user cannot enter the session
    server's socket directory, and a sidecar reaches its database over TCP anyway."""
    server = start_tcp_server(tmp_path_factory.mktemp("pg-tcp") / "data", free_port())
    yield server
    server.close()


@pytest.fixture
def backend(tcp_server: TcpPgServer) -> Backend:
    """The `deployment` fixture's server: the TCP one."""
    return Backend("pg18-tcp", source=tcp_server, sink=tcp_server, plugin="pgoutput")


@pytest.fixture
def container_name() -> Iterator[str]:
    """A name of the test's own; whatever state the test leaves it in, it is removed."""
    assert shutil.which("podman"), "WAL2VEC_IMAGE is set but podman is not installed"
    name = f"wal2vec-test-{uuid.uuid4().hex[:12]}"
    yield name
    podman("rm", "--force", "--ignore", "--time", "0", name)


@pytest.mark.parametrize(("image", "embedding"), IMAGES)
def test_the_image_streams_answers_its_probes_and_stops_cleanly(
    image: str,
    embedding: dict[str, Any],
    deployment: Deployment,
    container_name: str,
    tmp_path: Path,
) -> None:
    inspected = podman("image", "inspect", image)
    assert inspected.returncode == 0, f"image {image} not found: {inspected.stderr}"
    [config] = json.loads(inspected.stdout)
    assert config["Config"]["User"] == "10001:10001", "the image must not run as root"

    port = free_port()
    deployment.extra["shutdown_timeout"] = SHUTDOWN_TIMEOUT
    if embedding:
        deployment.extra["embedding"] = embedding
    config_file = deployment.write_config()
    config_file.chmod(0o644)  # the image's user, 10001, reads it through the bind mount
    deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Before', 'snapshot')")

    log = tmp_path / "container.log"
    with log.open("w") as handle:
        container = subprocess.Popen(
            [
                *PODMAN_RUN,
                "--name",
                container_name,
                "--volume",
                f"{config_file}:/etc/wal2vec/wal2vec.yaml:ro",
                # The image listens on every interface for the pod's probes; a test stays on
                # the loopback.
                "--env",
                "CDC_METRICS__HOST=127.0.0.1",
                "--env",
                f"CDC_METRICS__PORT={port}",
                image,
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def running_and(condition: bool) -> bool:
            code = container.poll()
            assert code is None, f"the container exited with {code}:\n{log.read_text()}"
            return condition

        wait_until(lambda: running_and(http_status(base + "/healthz") == 200), what="/healthz 200")
        wait_until(lambda: running_and(http_status(base + "/readyz") == 200), what="/readyz 200")

        deployment.execute("INSERT INTO articles (id, title, body) VALUES (2, 'After', 'stream')")
        wait_until(
            lambda: running_and({r["source_id"] for r in deployment.sink_rows()} == {"1", "2"}),
            what="both rows' vectors in the sink",
        )
        if embedding:  # the model's own vectors: 384 of them, under its name
            for row in deployment.sink_rows():
                assert row["model"] == embedding["model"]
                assert len(json.loads(row["embedding"])) == embedding["dimensions"]
        else:  # exactly the fake endpoint's vectors of the rows' content
            assert assert_in_step(deployment) == 2

        started = time.monotonic()
        stopped = podman("stop", "--time", str(STOP_GRACE), container_name)
        assert stopped.returncode == 0, stopped.stderr
        code = container.wait(DEADLINE)
        took = time.monotonic() - started
    finally:
        if container.poll() is None:
            podman("rm", "--force", "--time", "0", container_name)
            container.wait(DEADLINE)
    output = log.read_text()
    assert code == 0, output
    assert took < SHUTDOWN_TIMEOUT + 5, f"stopping took {took:.1f}s:\n{output}"
    assert "sk-test-secret-key-do-not-print" not in output
