"""Memory and stop time of `cdc run` under single large transactions, printed as JSON.

Scenarios, each with its own database and `cdc run`:

- `update_1m`, `update_5m`: one `UPDATE articles SET views = views + 1` over every row (a
  non-content column: nothing to embed). The rows' vectors are in the sink beforehand (written
  with SQL, so the snapshot only compares hashes), as in a real deployment.
- `insert_200k`: one `INSERT` of 200,000 rows of about 500 characters: all embedded.
- `sigterm_full_buffer`: SIGTERM while the buffer is full and a batch is at a slow endpoint:
  seconds to exit, the exit code, and that a restart loses nothing.

For each transaction: `cdc run`'s resident memory when idle (streaming, snapshot done) and its
peak while it applies the transaction (the kernel's high-water mark, reset before it starts),
the most rows the buffer held (`cdc_buffer_rows`, sampled) against `buffer.max_rows`, the
seconds from the commit to the sink holding it all, and the baseline of the same run:
`pg_recvlogical` reading the same transaction from its own slot to /dev/null.

    python bench/memory.py                   # the full run (~15 minutes on 2 CPUs)
    python bench/memory.py --quick           # 100k/200k/20k rows, a couple of minutes
    python bench/memory.py --only update_1m --out memory.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    attempt,
    embedded_server,
    environment,
    fake_endpoint,
    new_deployment,
    quiet_warnings,
    rate,
    ratio,
    scrape,
    sync_lsn,
    work_directory,
)
from bench.e2e import run_recvlogical  # noqa: E402
from tests.harness import DIMENSIONS, CdcProcess, Deployment, Table, seed_vectors  # noqa: E402

ARTICLES_DDL = (
    "CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text, "
    "views int NOT NULL DEFAULT 0)"
)
TABLES = [Table("public.articles", ["title", "body"], [])]
MAX_ROWS = 20_000
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    update_1m: int
    update_5m: int
    insert_200k: int
    sigterm_rows: int
    timeout: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--workdir", type=Path, help="keep configs and logs here")
    parser.add_argument("--shutdown-timeout", type=float, default=25.0)
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(100_000, 200_000, 20_000, 50_000, 600)
    return Sizes(1_000_000, 5_000_000, 200_000, 50_000, 3600)


# ---- measuring the process -----------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    """Reset the kernel's resident high-water mark (VmHWM) of `pid` to its current size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Sampler:
    """Samples `cdc_buffer_rows` from /metrics in a thread, while a transaction is applied."""

    def __init__(self, process: CdcProcess) -> None:
        self._process = process
        self._stop = threading.Event()
        self.buffer_rows: list[float] = []
        self.failed = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                values = scrape(self._process, lambda name, _: name == "cdc_buffer_rows")
            except Exception:  # a scrape that fails under load is a sample missed, no more
                self.failed += 1
                continue
            self.buffer_rows.append(values.get("cdc_buffer_rows", 0.0))

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)


def wait_for(condition: Callable[[], bool], process: CdcProcess, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.process.poll() is not None:
            raise RuntimeError(f"cdc run exited with {process.process.returncode} ({what})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:g}s")
        time.sleep(0.05)


# ---- the data ------------------------------------------------------------------------------


def body_sql(characters: int) -> str:
    """SQL for a body of about `characters` characters, different per row `g`."""
    pieces = max(1, characters // 33)
    words = f"md5((g * {pieces} + p)::text)"
    return f"(SELECT string_agg({words}, ' ') FROM generate_series(1, {pieces}) p)"


def load_rows(dep: Deployment, rows: int, body_chars: int) -> None:
    dep.execute(
        "INSERT INTO articles (id, title, body) "
        f"SELECT g, 'Article ' || g, {body_sql(body_chars)} FROM generate_series(1, {rows}) g"
    )


def seed_sink(dep: Deployment) -> None:
    seed_vectors(dep, placeholder_index=True)
    dep.execute("VACUUM ANALYZE articles")


# ---- scenarios -----------------------------------------------------------------------------


@dataclass
class Context:
    server: Any
    base_url: str
    workdir: Path
    sizes: Sizes
    shutdown_timeout: float
    exit_codes: list[int | None]

    @contextlib.contextmanager
    def deployment(self, name: str, **extra: Any) -> Iterator[Deployment]:
        settings: dict[str, Any] = {
            "buffer": {"max_rows": MAX_ROWS},
            "shutdown_timeout": self.shutdown_timeout,
        } | extra
        with new_deployment(
            self.server, self.base_url, self.workdir / name, TABLES, settings, self.exit_codes
        ) as dep:
            dep.execute(ARTICLES_DDL)
            yield dep


def embedded_chunks(process: CdcProcess) -> float:
    return scrape(process, lambda name, _: name == "cdc_embeddings_total").get(
        "cdc_embeddings_total", 0.0
    )


def one_transaction(ctx: Context, dep: Deployment, statement: str) -> dict[str, Any]:
    """Run `statement` as one transaction under a streaming `cdc run`; measure it applied."""
    process = dep.start()
    wait_for(dep.snapshot_done, process, ctx.sizes.timeout, "snapshot done")
    wait_for(lambda: dep.checkpoint_reached(sync_lsn(dep)), process, 120, "streaming")
    pid = process.process.pid
    idle_kib = status_kib(pid, "VmRSS")
    embedded_before = embedded_chunks(process)
    recv_slot = f"{dep.slot}_recv"
    dep.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (recv_slot,))
    reset_peak(pid)
    with Sampler(process).running() as sampler:
        started = time.perf_counter()
        with dep.connect() as conn:
            rows = conn.execute(statement).rowcount
        committed = time.perf_counter()
        endpos = sync_lsn(dep)
        wait_for(lambda: dep.checkpoint_reached(endpos), process, ctx.sizes.timeout, "the sink")
        applied = time.perf_counter()
    peak_kib = status_kib(pid, "VmHWM")
    embedded = embedded_chunks(process) - embedded_before
    stopped_at = time.perf_counter()
    process.stop(120)
    stop_seconds = time.perf_counter() - stopped_at
    recv_seconds = run_recvlogical(dep, recv_slot, endpos, ctx.sizes.timeout)
    wal2vec_seconds = applied - committed
    return {
        "rows": rows,
        "statement_seconds": round(committed - started, 3),
        "wal2vec_seconds_commit_to_sink": round(wal2vec_seconds, 3),
        "wal2vec_rows_per_s": rate(rows, wal2vec_seconds),
        "pg_recvlogical_seconds": round(recv_seconds, 3),
        "ratio_wal2vec_to_pg_recvlogical_rate": ratio(recv_seconds, wal2vec_seconds),
        "chunks_embedded": int(embedded),
        "idle_rss_mb": round(idle_kib / 1024, 1),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "peak_over_idle": ratio(peak_kib, idle_kib),
        "buffer_max_rows": MAX_ROWS,
        "buffer_rows_max_seen": int(max(sampler.buffer_rows, default=0)),
        "buffer_samples": len(sampler.buffer_rows),
        "buffer_samples_failed": sampler.failed,
        "stop_seconds_after": round(stop_seconds, 3),
        "under_300_mb": peak_kib < 300 * 1024,
    }


def update_scenario(ctx: Context, name: str, rows: int) -> dict[str, Any]:
    with ctx.deployment(name) as dep:
        loaded = time.perf_counter()
        load_rows(dep, rows, body_chars=200)
        seed_sink(dep)
        setup_seconds = time.perf_counter() - loaded
        result = one_transaction(ctx, dep, "UPDATE articles SET views = views + 1")
        result["setup_seconds"] = round(setup_seconds, 1)
        return result


def insert_scenario(ctx: Context, rows: int) -> dict[str, Any]:
    with ctx.deployment("insert") as dep:
        statement = (
            "INSERT INTO articles (id, title, body) "
            f"SELECT g, 'Article ' || g, {body_sql(500)} FROM generate_series(1, {rows}) g"
        )
        return one_transaction(ctx, dep, statement)


def sigterm_scenario(ctx: Context, rows: int) -> dict[str, Any]:
    """SIGTERM with a full buffer and a batch at an endpoint that answers in 20 s."""
    with (
        fake_endpoint(DIMENSIONS, latency=20.0) as (slow_url, _pid),
        ctx.deployment("sigterm", embedding={"base_url": slow_url}) as dep,
    ):
        if True:
            process = dep.start()
            wait_for(dep.snapshot_done, process, 120, "snapshot done")
            with dep.connect() as conn:
                conn.execute(
                    "INSERT INTO articles (id, title, body) "
                    f"SELECT g, 'Article ' || g, {body_sql(200)} FROM generate_series(1, {rows}) g"
                )

            def buffer_full() -> bool:
                values = scrape(process, lambda name, _: name == "cdc_buffer_rows")
                return values.get("cdc_buffer_rows", 0.0) >= MAX_ROWS

            wait_for(buffer_full, process, 300, "a full buffer")
            signalled = time.perf_counter()
            process.process.terminate()
            code = process.process.wait(300)
            seconds = time.perf_counter() - signalled
            abandoned = "abandoning" in process.output
            # Nothing lost: a restart against a quick endpoint applies every row.
            dep.extra["embedding"] = {"base_url": ctx.base_url}
            again = dep.start()
            endpos = sync_lsn(dep)
            wait_for(lambda: dep.checkpoint_reached(endpos), again, 600, "the restart")
            vectors = len(dep.sink_rows())
            again.stop(120)
    return {
        "rows": rows,
        "shutdown_timeout": ctx.shutdown_timeout,
        "seconds_sigterm_to_exit": round(seconds, 3),
        "exit_code": code,
        "abandoned_batch_in_flight": abandoned,
        "within_shutdown_timeout": seconds <= ctx.shutdown_timeout,
        "vectors_after_restart": vectors,
        "nothing_lost": vectors == rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_warnings()
    sizes = sizes_from(args)
    wanted = set(args.only or ["update_1m", "update_5m", "insert_200k", "sigterm_full_buffer"])
    results: dict[str, Any] = {"sizes": sizes.__dict__}
    with (
        work_directory(args.workdir) as workdir,
        embedded_server(workdir / "pg") as server,
        fake_endpoint(DIMENSIONS) as (url, _pid),
    ):
        results["environment"] = environment(server)
        ctx = Context(server, url, workdir, sizes, args.shutdown_timeout, [])
        scenarios: dict[str, Callable[[], Any]] = {
            "update_1m": lambda: update_scenario(ctx, "update_1m", sizes.update_1m),
            "update_5m": lambda: update_scenario(ctx, "update_5m", sizes.update_5m),
            "insert_200k": lambda: insert_scenario(ctx, sizes.insert_200k),
            "sigterm_full_buffer": lambda: sigterm_scenario(ctx, sizes.sigterm_rows),
        }
        for name, scenario in scenarios.items():
            if name in wanted:
                attempt(results, name, scenario)
                print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
        results["cdc_run_exit_codes"] = ctx.exit_codes
    results["errors"] = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
