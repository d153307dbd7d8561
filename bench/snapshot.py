"""Snapshot benchmark: `cdc run`'s first snapshot into a new sink, its HNSW index built after the
load, against the same rows written with the index live. Prints one JSON object per line.

Everything runs on this machine (see bench/common.py): the embedded PostgreSQL 18 with
pgvector, the fake OpenAI-compatible endpoint in its own process (no latency), `cdc run` as a
subprocess. For each dimension case (256 dimensions, 1,000,000 short rows; 1536 dimensions,
100,000 rows), one line per scenario:

1. wal2vec_snapshot / built_after_load: `cdc run` on a new sink. `cdc.sink.indexes` drops the
   HNSW index of the empty sink table, the rows are loaded, the index is built at the end.
   Clock: `cdc run` started -> `cdc_state.snapshot_done`. Also at the live rows' size.
2. wal2vec_snapshot / live: the same, the sink made by `cdc setup` (with its index) and holding
   one row of another source table, so it is not empty and the index stays live while the
   snapshot writes. Run on a prefix of the rows (`rows_measured`): HNSW inserts are slow.
3. server_copy / built_after_load and / live: PostgreSQL alone: the same sink rows (exported
   from run 1) by binary COPY into a table of the sink's shape, then the index built by the
   very code `cdc run` uses (`cdc.sink.indexes.build_indexes`); or COPYed into it with the index.
4. summary: rows/s of each path, speed-ups, index build times, peak memory.

    python bench/snapshot.py --quick
    python bench/snapshot.py [--dimensions 256 1536] [--rows DIMS=N] [--live-rows DIMS=N]
                             [--scale F] [--index-memory 1GB] [--out PATH] [--workdir DIR]

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection

from cdc.config import SnapshotConfig
from cdc.sink.indexes import build_indexes
from cdc.sink.schema import index_name, sink_table_ddl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `bench` and the harness (`tests`) are not installed

from bench.common import (  # noqa: E402
    SERVER_EXTRA,
    SINK_TABLE,
    attempt,
    embedded_server,
    environment,
    fake_endpoint,
    fresh_database,
    new_deployment,
    poll,
    quiet_warnings,
    rate,
    ratio,
    scrape,
    sync_lsn,
    vocabulary,
    work_directory,
)
from tests.harness import MODEL, CdcProcess, Deployment, Table  # noqa: E402
from tests.pg import PgServer  # noqa: E402

DOCS = Table("public.docs", ["title"], ["author_id"])
DOCS_DDL = "CREATE TABLE docs (id bigint PRIMARY KEY, title text NOT NULL, author_id int NOT NULL)"
TITLE_WORDS = 8
SINK_COLUMNS = (
    "source_table, source_id, chunk, content, content_hash, model, embedding, metadata, lsn, "
    "updated_at"
)
# dimensions -> (rows, live rows): the sizes, and --quick's.
FULL = {256: (1_000_000, 100_000), 1536: (100_000, 10_000)}
QUICK = {256: (20_000, 5_000), 1536: (4_000, 1_000)}
SAMPLE_INTERVAL = 0.5  # seconds between memory samples
TIMELINE_POINTS = 12
BUILT_LOG = re.compile(r"built the HNSW index of \S+ in ([\d.]+)s")
LOADED_LOG = re.compile(r"snapshot of \S+: (\d+) rows in ([\d.]+)s")
DEFERRED_LOG = "without their HNSW index"


# ---- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    dimensions: int
    rows: int  # the load-then-index paths, in full
    live_rows: int  # the live-index paths: the first `live_rows` of the same rows


@dataclass(frozen=True)
class Options:
    cases: list[Case]
    index_memory: str
    timeout: float
    skip_server: bool


def dims_count(text: str) -> tuple[int, int]:
    dims, _, count = text.partition("=")
    try:
        return int(dims), int(count.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write DIMS=N, e.g. 256=200000") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--dimensions", type=int, nargs="+", choices=sorted(FULL), help="cases (default both)"
    )
    parser.add_argument(
        "--rows", type=dims_count, action="append", default=[], metavar="DIMS=N",
        help="rows of a case's load-then-index runs (256=1000000, 1536=100000)",
    )  # fmt: skip
    parser.add_argument(
        "--live-rows", type=dims_count, action="append", default=[], metavar="DIMS=N",
        help="rows of a case's live-index runs, a prefix (256=100000, 1536=10000)",
    )  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the default sizes")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument(
        "--index-memory",
        default=SnapshotConfig().index_build_memory,
        help="snapshot.index_build_memory (maintenance_work_mem of the build); cdc's default",
    )
    parser.add_argument("--skip-server", action="store_true", help="no PostgreSQL-alone runs")
    parser.add_argument("--timeout", type=float, help="seconds any one wait may take")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    parser.add_argument("--workdir", type=Path, help="keep configs, logs and COPY files here")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    defaults = QUICK if args.quick else FULL
    rows, live = dict(args.rows), dict(args.live_rows)
    cases = []
    for dims in args.dimensions or sorted(FULL):
        full, prefix = (max(1, round(n * args.scale)) for n in defaults[dims])
        count = rows.get(dims, full)
        cases.append(Case(dims, count, min(live.get(dims, prefix), count)))
    return Options(
        cases=cases,
        index_memory=args.index_memory,
        timeout=args.timeout or (600.0 if args.quick else 7200.0),
        skip_server=bool(args.skip_server),
    )


# ---- data ----------------------------------------------------------------------------------


def make_docs(count: int, seed: int = 7) -> Iterator[tuple[int, str, int]]:
    """Deterministic short rows (an 8-word title): any count's rows start with a smaller one's."""
    rng = random.Random(seed)
    words = vocabulary(random.Random(seed))
    for n in range(1, count + 1):
        yield n, " ".join(rng.choices(words, k=TITLE_WORDS)).capitalize(), rng.randint(1, 500)


def fill_docs(dsn: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DOCS_DDL)
        with conn.cursor() as cursor, cursor.copy("COPY docs FROM STDIN") as copy:
            for row in make_docs(count):
                copy.write_row(row)
        conn.execute("VACUUM ANALYZE docs")  # the snapshot's row estimate, a settled table


def export_sink(dsn: str, path: Path) -> int:
    """The sink's rows of `docs` as a binary COPY file, in key order; bytes written."""
    query = (
        f"COPY (SELECT {SINK_COLUMNS} FROM {SINK_TABLE} WHERE source_table = %s "
        "ORDER BY source_id::bigint) TO STDOUT (FORMAT BINARY)"
    )
    size = 0
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cursor,
        path.open("wb") as out,
        cursor.copy(query, (DOCS.table,)) as copy,
    ):
        for block in copy:
            size += out.write(block)
    return size


# ---- memory: /proc, sampled on a thread ----------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssShmem, ...) and PPid;
    empty when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])
    return values


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def postmaster_pid(dsn: str) -> int:
    """The server's postmaster: the parent of a backend."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return proc_status(int(row[0]))["PPid"]


def server_memory(postmaster: int) -> tuple[int, int, int]:
    """(sum of RssAnon, largest RssShmem, parallel workers) over the server's processes, in kB.

    RssAnon is a process's private memory (work_mem, maintenance_work_mem, the graph of a
    serial HNSW build); RssShmem the shared memory it touched (shared_buffers, and the graph of
    a parallel build, which lives in a shared segment): counted once, as its largest.
    """
    private, shared, workers = 0, 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        status = proc_status(pid)
        if pid != postmaster and status.get("PPid") != postmaster:
            continue
        private += status.get("RssAnon", 0)
        shared = max(shared, status.get("RssShmem", 0))
        if "parallel worker" in process_title(pid):
            workers += 1
    return private, shared, workers


def mb(kilobytes: float) -> float:
    return round(kilobytes / 1024, 1)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of a process (and of its children it has waited for), from
    /proc/PID/stat; 0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # fields 3.. of proc(5): state, ppid, ...
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def wait_reaped(pids: Sequence[int], timeout: float = 10.0) -> None:
    """Until these (closed) backends are reaped, so their CPU is in the postmaster's children
    times."""
    poll(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
        timeout,
        "closed backends to be reaped",
        interval=0.01,
    )


def server_cpu(postmaster: int) -> float:
    """CPU the server has used: the postmaster, its live processes, and (in the postmaster's
    children times) every backend and parallel worker that has exited. A difference of two
    readings is the server's CPU between them."""
    total = cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and proc_status(int(entry.name)).get("PPid") == postmaster:
            total += cpu_seconds(int(entry.name))
    return total


@dataclass
class Sampler:
    """Memory of the server (and of one client process) every `SAMPLE_INTERVAL` seconds on a
    thread, with how far the work got (`progress`, called on that thread)."""

    postmaster: int
    pid: int | None = None
    progress: Callable[[], int | None] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self, started: float) -> None:
        private, shared, workers = server_memory(self.postmaster)
        sample: dict[str, Any] = {
            "s": round(time.perf_counter() - started, 1),
            "server_private_mb": mb(private),
            "server_shared_mb": mb(shared),
            "parallel_workers": workers,
        }
        if self.pid is not None:
            sample["cdc_rss_mb"] = mb(proc_status(self.pid).get("VmRSS", 0))
        if self.progress is not None:
            sample["rows_done"] = self.progress()
        self.samples.append(sample)

    def _loop(self) -> None:
        started = time.perf_counter()
        while True:
            self._sample(started)
            if self._stop.wait(SAMPLE_INTERVAL):
                return

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def peaks(self) -> dict[str, Any]:
        def top(key: str) -> Any:
            return max((s.get(key) or 0 for s in self.samples), default=None)

        return {
            "server_private_mb": top("server_private_mb"),
            "server_shared_mb_one_process": top("server_shared_mb"),
            "parallel_workers": top("parallel_workers"),
        }

    def timeline(self, rows: int | None = None) -> list[dict[str, Any]]:
        """About `TIMELINE_POINTS` samples evenly spread in time, the last included, and with
        `rows` the first sample past each tenth of them (how memory grows with the load)."""
        count = len(self.samples)
        step = max(1, -(-count // TIMELINE_POINTS))
        chosen = set(range(0, count, step)) | ({count - 1} if count else set())
        for tenth in range(1, 11) if rows else ():
            past = (
                i
                for i, s in enumerate(self.samples)
                if (s.get("rows_done") or 0) >= tenth * (rows or 0) / 10
            )
            first = next(past, None)
            if first is not None:
                chosen.add(first)
        return [self.samples[i] for i in sorted(chosen)]


# ---- wal2vec: `cdc run`'s snapshot ---------------------------------------------------------


@dataclass
class Context:
    server: PgServer
    workdir: Path
    options: Options
    postmaster: int
    endpoint_pid: int = 0
    exit_codes: list[int | None] = field(default_factory=list)


class SnapshotProbe:
    """One connection polling the sink's state; another, for the sampler thread, its progress."""

    def __init__(self, dep: Deployment) -> None:
        self.slot = dep.slot
        self.conn = dep.connect()
        self.progress_conn = dep.connect()

    def close(self) -> None:
        self.conn.close()
        self.progress_conn.close()

    def done(self) -> bool:
        return bool(self._value(self.conn, "SELECT snapshot_done FROM cdc_state WHERE slot = %s"))

    def rows_done(self) -> int | None:
        query = "SELECT sum(rows_done) FROM cdc_snapshots WHERE slot = %s"
        value = self._value(self.progress_conn, query)
        return None if value is None else int(value)

    def _value(self, conn: psycopg.Connection[Any], query: str) -> Any:
        try:
            row = conn.execute(query, (self.slot,)).fetchone()
        except psycopg.errors.UndefinedTable:
            return None  # `cdc run` has not made its tables yet
        return row[0] if row else None

    def confirmed_past(self, lsn: str) -> bool:
        row = self.conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (lsn, self.slot),
        ).fetchone()
        return bool(row and row[0])

    def snapshot_record(self) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT sum(rows_done), extract(epoch FROM max(finished_at) - min(started_at)) "
            "FROM cdc_snapshots WHERE slot = %s AND status = 'done'",
            (self.slot,),
        ).fetchone()
        if row is None or row[0] is None:
            return {}
        return {"rows_done": int(row[0]), "seconds": round(float(row[1]), 3)}

    def sink_state(self) -> dict[str, Any]:
        name = index_name(SINK_TABLE)
        count = self.conn.execute(
            f"SELECT count(*) FROM {SINK_TABLE} WHERE source_table = %s", (DOCS.table,)
        ).fetchone()
        valid = self.conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)
        ).fetchone()
        return {"vectors": int(count[0]) if count else 0, "index_valid": bool(valid and valid[0])}


def wal_mb(conn: psycopg.Connection[Any], start: str, end: str) -> float:
    row = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)::bigint", (end, start)).fetchone()
    return mb((int(row[0]) if row else 0) / 1024)


def log_figures(output: str) -> dict[str, Any]:
    """What `cdc run` logged about its snapshot: load time, index build time, deferral, and
    any warning about the build."""
    built = BUILT_LOG.findall(output)
    loaded = LOADED_LOG.findall(output)
    warnings = [
        line.split("cdc.sink.indexes:", 1)[1].strip()
        for line in output.splitlines()
        if "cdc.sink.indexes:" in line and " INFO " not in line
    ]
    return {
        "index_deferred": DEFERRED_LOG in output,
        "index_warnings": warnings,
        "load_seconds": round(sum(float(s) for _, s in loaded), 3) if loaded else None,
        "index_build_seconds": round(sum(float(s) for s in built), 3) if built else 0.0,
    }


def prepare_live_sink(dep: Deployment, dimensions: int) -> None:
    """The sink as `cdc setup` makes it (its HNSW index included), holding one row of another
    source table: not empty, so `cdc.sink.indexes` keeps the index live during the snapshot."""
    done = dep.cli("setup")
    if done.returncode != 0:
        raise RuntimeError(f"cdc setup exited with {done.returncode}: {done.stderr.strip()}")
    unit = "[" + ",".join(["1"] + ["0"] * (dimensions - 1)) + "]"
    dep.execute(
        f"INSERT INTO {SINK_TABLE} (source_table, source_id, chunk, content, content_hash, "
        "model, embedding) VALUES ('bench.placeholder', '0', 0, 'placeholder', '', %s, "
        "%s::vector)",
        (MODEL, unit),
    )


def wal2vec_snapshot(
    ctx: Context, url: str, case: Case, rows: int, *, live: bool, export: Path | None
) -> dict[str, Any]:
    """`cdc run` on a new deployment of `rows` docs, timed until its snapshot is done."""
    name = f"{case.dimensions}d-{rows}-{'live' if live else 'after'}"
    extra = {
        "embedding": {"dimensions": case.dimensions},
        "snapshot": {"index_build_memory": ctx.options.index_memory},
    }
    with new_deployment(ctx.server, url, ctx.workdir / name, [DOCS], extra, ctx.exit_codes) as dep:
        fill_docs(dep.dsn, rows)
        if live:
            prepare_live_sink(dep, case.dimensions)
        probe = SnapshotProbe(dep)
        try:
            result = timed_snapshot(ctx, dep, probe, rows)
        finally:
            probe.close()
        if export is not None:
            result["exported_mb"] = mb(export_sink(dep.dsn, export) / 1024)
    scenario = {
        "scenario": "wal2vec_snapshot",
        "dimensions": case.dimensions,
        "index": "live" if live else "built_after_load",
        "rows": rows,
    }
    return scenario | result


def timed_snapshot(
    ctx: Context, dep: Deployment, probe: SnapshotProbe, rows: int
) -> dict[str, Any]:
    timeout = ctx.options.timeout
    start_lsn = dep.current_lsn()
    cpu_before = (server_cpu(ctx.postmaster), cpu_seconds(ctx.endpoint_pid))
    started = time.perf_counter()
    process = dep.start()
    pid = process.process.pid
    sampler = Sampler(ctx.postmaster, pid, probe.rows_done)
    with sampler.running():
        poll(probe.done, timeout, "the snapshot to finish", process, 0.1)
        seconds = time.perf_counter() - started
        cpu = {
            "cdc_run": cpu_seconds(pid),
            "endpoint": cpu_seconds(ctx.endpoint_pid) - cpu_before[1],
            "server": server_cpu(ctx.postmaster) - cpu_before[0],
        }
    peak_rss = proc_status(pid).get("VmHWM", 0)
    timers = scrape(process)
    caught_up = catch_up(dep, probe, process, timeout)
    with dep.connect() as conn:
        wal = wal_mb(conn, start_lsn, caught_up["lsn"])
    code = process.stop(120)
    figures = log_figures(process.output)
    state = probe.sink_state()
    if state["vectors"] != rows or not state["index_valid"]:
        raise AssertionError(f"the sink after the snapshot of {rows} rows: {state}")
    load = figures["load_seconds"]
    return {
        "rows_measured": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": rate(rows, seconds),
        "load_seconds": load,
        "load_rows_per_s": rate(rows, load) if load else None,
        "index_build_seconds": figures["index_build_seconds"],
        "other_seconds": round(seconds - (load or 0) - figures["index_build_seconds"], 3),
        "index_deferred": figures["index_deferred"],
        "index_warnings": figures["index_warnings"],
        "cdc_snapshots_record": probe.snapshot_record(),
        "catch_up_after_snapshot_seconds": caught_up["seconds"],
        "wal_mb": wal,
        "peak_mb": {"cdc_run_rss": mb(peak_rss)} | sampler.peaks(),
        "cpu_seconds": cpu_report(cpu, seconds),
        "cdc_timers": timer_report(timers),
        "sink": state,
        "exit_code": code,
        "timeline": sampler.timeline(rows),
    }


def cpu_report(cpu: dict[str, float], seconds: float) -> dict[str, Any]:
    """CPU seconds by process, and how many cores they kept busy on average."""
    total = sum(cpu.values())
    report: dict[str, Any] = {name: round(value, 1) for name, value in cpu.items()}
    return report | {"total": round(total, 1), "cores_busy": round(total / seconds, 2)}


def timer_report(timers: dict[str, float]) -> dict[str, Any]:
    """`cdc run`'s own timers: applies (embed + write) and embedding requests. Batches are
    embedded and written concurrently (`snapshot.workers`, `embedding.concurrency`), so the
    sums can exceed the wall time."""
    return {
        "applies": int(timers.get("cdc_flush_seconds_count", 0)),
        "apply_seconds_sum": round(timers.get("cdc_flush_seconds_sum", 0.0), 1),
        "embedding_requests": int(timers.get("cdc_embedding_request_seconds_count", 0)),
        "embedding_request_seconds_sum": round(
            timers.get("cdc_embedding_request_seconds_sum", 0.0), 1
        ),
    }


def catch_up(
    dep: Deployment, probe: SnapshotProbe, process: CdcProcess, timeout: float
) -> dict[str, Any]:
    """After the snapshot the stream starts and decodes the WAL written meanwhile (the sink's
    own writes too, when it shares the source's database): time until it passes a position
    written now."""
    started = time.perf_counter()
    lsn = sync_lsn(dep)
    poll(lambda: probe.confirmed_past(lsn), timeout, "the stream to catch up", process, 0.1)
    return {"lsn": lsn, "seconds": round(time.perf_counter() - started, 3)}


# ---- PostgreSQL alone: COPY, with the index live or built after ----------------------------


def server_copy(ctx: Context, case: Case, source: Path, rows: int, live: bool) -> dict[str, Any]:
    """Binary COPY of `source` (sink rows) into a new table of the sink's shape, with its HNSW
    index live, or built afterwards as `cdc run` builds it."""
    table = "copy_sink"
    with fresh_database(ctx.server) as database:
        dsn = ctx.server.dsn(database)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in sink_table_ddl("public", table, "vector", case.dimensions, index=live):
                conn.execute(statement)
        sampler = Sampler(ctx.postmaster)
        cpu_before = server_cpu(ctx.postmaster)
        notices: list[str] = []
        backends: list[int] = []
        with sampler.running():
            copy_seconds = copy_file(dsn, table, source, backends)
            build_seconds = 0.0 if live else build_index(dsn, table, ctx.options, notices, backends)
        wait_reaped(backends)
        cpu = {"server": server_cpu(ctx.postmaster) - cpu_before}
        with psycopg.connect(dsn) as conn:
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    if not count or count[0] != rows:
        raise AssertionError(f"COPY of {rows} rows left {count}")
    seconds = copy_seconds + build_seconds
    return {
        "scenario": "server_copy",
        "dimensions": case.dimensions,
        "index": "live" if live else "built_after_load",
        "rows": rows,
        "rows_measured": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": rate(rows, seconds),
        "copy_seconds": round(copy_seconds, 3),
        "copy_rows_per_s": rate(rows, copy_seconds),
        "index_build_seconds": round(build_seconds, 3),
        "notices": notices,
        "peak_mb": sampler.peaks(),
        "cpu_seconds": cpu_report(cpu, seconds),
    }


def copy_file(dsn: str, table: str, source: Path, backends: list[int]) -> float:
    query = f"COPY {table} ({SINK_COLUMNS}) FROM STDIN (FORMAT BINARY)"
    with psycopg.connect(dsn, autocommit=True) as conn, source.open("rb") as data:
        backends.append(conn.info.backend_pid)
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(query) as copy:
            while block := data.read(1 << 20):
                copy.write(block)
        return time.perf_counter() - started


def build_index(
    dsn: str, table: str, options: Options, notices: list[str], backends: list[int]
) -> float:
    """`cdc.sink.indexes.build_indexes`, the code `cdc run` uses, with the server's notices kept
    (pgvector says there when the graph outgrows maintenance_work_mem)."""

    async def build() -> float:
        conn = await AsyncConnection.connect(dsn, autocommit=True)
        backends.append(conn.info.backend_pid)
        conn.add_notice_handler(lambda d: notices.append(f"{d.message_primary} {d.message_detail}"))
        try:
            started = time.perf_counter()
            await build_indexes(conn, [("public", table)], "vector", options.index_memory)
            return time.perf_counter() - started
        finally:
            await conn.close()

    return asyncio.run(build())


# ---- one dimension case --------------------------------------------------------------------


def run_case(ctx: Context, case: Case, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every scenario of one case, each emitted as it ends; the case's results by key."""
    results: dict[str, Any] = {}
    full_file = ctx.workdir / f"sink-{case.dimensions}d-{case.rows}.copy"
    live_file = ctx.workdir / f"sink-{case.dimensions}d-{case.live_rows}.copy"
    prefix = case.live_rows < case.rows
    with fake_endpoint(case.dimensions) as (url, endpoint_pid):
        ctx.endpoint_pid = endpoint_pid

        def snapshot(key: str, rows: int, live: bool, export: Path | None) -> None:
            run = attempt(
                results,
                key,
                lambda: wal2vec_snapshot(ctx, url, case, rows, live=live, export=export),
            )
            emit(results[key] if run else {"scenario": key, **results[key]})

        export = None if ctx.options.skip_server else full_file
        snapshot("wal2vec_after", case.rows, False, export)
        if prefix:
            export = None if ctx.options.skip_server else live_file
            snapshot("wal2vec_after_live_rows", case.live_rows, False, export)
        snapshot("wal2vec_live", case.live_rows, True, None)
    if ctx.options.skip_server:
        return results

    def copy(key: str, source: Path, rows: int, live: bool) -> None:
        if not source.exists():
            results[key] = {"error": f"no rows to COPY: {source.name} was not exported"}
        else:
            attempt(results, key, lambda: server_copy(ctx, case, source, rows, live))
        emit(results[key] if "error" not in results[key] else {"scenario": key, **results[key]})

    copy("server_after", full_file, case.rows, False)
    if prefix:
        copy("server_after_live_rows", live_file, case.live_rows, False)
    copy("server_live", live_file if prefix else full_file, case.live_rows, True)
    for path in (full_file, live_file):
        path.unlink(missing_ok=True)
    return results


def figure(results: dict[str, Any], key: str, name: str = "rows_per_s") -> Any:
    value = results.get(key)
    return value.get(name) if isinstance(value, dict) else None


def case_summary(case: Case, results: dict[str, Any]) -> dict[str, Any]:
    same = "_live_rows" if case.live_rows < case.rows else ""
    speed = {
        "wal2vec_built_after_load": figure(results, "wal2vec_after"),
        "wal2vec_built_after_load_at_live_rows": figure(results, f"wal2vec_after{same}"),
        "wal2vec_live_index": figure(results, "wal2vec_live"),
        "server_built_after_load": figure(results, "server_after"),
        "server_built_after_load_at_live_rows": figure(results, f"server_after{same}"),
        "server_live_index": figure(results, "server_live"),
    }
    live = speed["wal2vec_live_index"]
    return {
        "dimensions": case.dimensions,
        "rows": case.rows,
        "live_rows_measured": case.live_rows,
        # The live-index rates come from the first `live_rows`: an HNSW insert gets slower as
        # the graph grows, so all the rows would take longer than this.
        "live_index_extrapolated": case.live_rows < case.rows,
        "wal2vec_live_index_seconds_for_all_rows_at_least": round(case.rows / live, 1)
        if isinstance(live, int | float) and live
        else None,
        "rows_per_s": speed,
        "speedup_index_built_after_load": {
            "wal2vec_same_rows": ratio(
                speed["wal2vec_built_after_load_at_live_rows"], speed["wal2vec_live_index"]
            ),
            "wal2vec_full_rows_vs_live_prefix": ratio(
                speed["wal2vec_built_after_load"], speed["wal2vec_live_index"]
            ),
            "server_same_rows": ratio(
                speed["server_built_after_load_at_live_rows"], speed["server_live_index"]
            ),
            "server_full_rows_vs_live_prefix": ratio(
                speed["server_built_after_load"], speed["server_live_index"]
            ),
        },
        "wal2vec_to_server": {
            "built_after_load": ratio(
                speed["wal2vec_built_after_load"], speed["server_built_after_load"]
            ),
            "live_index": ratio(speed["wal2vec_live_index"], speed["server_live_index"]),
        },
        "index_build_seconds": {
            "wal2vec": figure(results, "wal2vec_after", "index_build_seconds"),
            "server": figure(results, "server_after", "index_build_seconds"),
        },
        "wal2vec_load_rows_per_s": figure(results, "wal2vec_after", "load_rows_per_s"),
        "peak_mb": {
            "wal2vec_built_after_load": figure(results, "wal2vec_after", "peak_mb"),
            "wal2vec_live_index": figure(results, "wal2vec_live", "peak_mb"),
        },
        "wall_seconds": results.get("wall_seconds"),
    }


# ---- the run -------------------------------------------------------------------------------


def server_settings(server: PgServer) -> dict[str, str]:
    names = [
        "shared_buffers", "maintenance_work_mem", "max_parallel_maintenance_workers",
        "max_parallel_workers", "max_worker_processes", "max_wal_size", "fsync",
        "full_page_writes", "synchronous_commit", "logical_decoding_work_mem",
    ]  # fmt: skip
    settings = {}
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for name in names:
            row = conn.execute(f"SHOW {name}").fetchone()
            settings[name] = str(row[0]) if row else ""
    return settings


def benchmark(workdir: Path, options: Options, emit: Callable[[dict[str, Any]], None]) -> int:
    started = time.perf_counter()
    with embedded_server(workdir / "pg") as server:
        emit(
            {
                "scenario": "settings",
                "environment": environment(server),
                "server": server_settings(server) | {"bench_overrides": SERVER_EXTRA},
                "snapshot_config": SnapshotConfig(
                    index_build_memory=options.index_memory
                ).model_dump(),
                "cases": [vars(case) for case in options.cases],
                "rows": f"docs(id bigint, title text, author_id int): a {TITLE_WORDS}-word title",
                "endpoint": "tests.fakes.openai_server in its own process, no latency",
            }
        )
        ctx = Context(server, workdir, options, postmaster_pid(server.dsn()))
        summary: dict[str, Any] = {"scenario": "summary", "cases": {}}
        errors: list[str] = []
        for case in options.cases:
            results = run_case(ctx, case, emit)
            summary["cases"][str(case.dimensions)] = case_summary(case, results)
            errors += [
                f"{case.dimensions}:{key}"
                for key, value in results.items()
                if isinstance(value, dict) and "error" in value
            ]
    summary["cdc_run_exit_codes"] = ctx.exit_codes
    summary["errors"] = errors
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    emit(summary)
    return 1 if errors or any(code != 0 for code in ctx.exit_codes) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_warnings()
    options = options_from(args)
    out = args.out.open("w") if args.out is not None else None

    def emit(obj: dict[str, Any]) -> None:
        line = json.dumps(obj)
        print(line, flush=True)
        if out is not None:
            out.write(line + "\n")
            out.flush()

    try:
        with work_directory(args.workdir) as workdir:
            return benchmark(workdir, options, emit)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
