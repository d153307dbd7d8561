"""pgoutput against wal2json: `cdc run`'s throughput on the same workload read through each
output plugin. Prints one JSON object.

The source is Debian's PostgreSQL 15 (`tests/pg15.py`, with wal2json 2.5), the sink the embedded
PostgreSQL 18 with pgvector (`sink.dsn`), the fake OpenAI-compatible endpoint answers at once
with 1536-dimension vectors in its own process, and `cdc run` runs as a subprocess. Both
servers get `bench.common.SERVER_EXTRA` on top of the tests' settings:
`logical_decoding_work_mem = 64MB`, because the tests' 64kB would spill every 500-row insert
and 1000-row update to disk in the walsender's reorder buffer (wal2vec asks neither plugin to
stream transactions in progress), a cost of the test setting that both plugins would pay and
that would blur the difference between them; and `synchronous_commit = on`, because with
`off` a commit returns before its WAL is flushed while a walsender sends only flushed WAL,
so every transaction would wait for the WAL writer's 200 ms round.

For each plugin, pgoutput then wal2json, in databases of its own on both servers:

1. insert_rows_per_s: rows inserted in transactions of 500 while `cdc run` streams, until the
   slot's checkpoint passes them (the sink's HNSW index replaced by a btree placeholder under
   its name unless `--keep-index`: its inserts, ~100 rows/s, would hide the plugins).
2. non_content_updates: `cdc run` stopped, updates of `views` only written, then `cdc run`
   restarted on the backlog and timed until its checkpoint passes them, from its start and
   from the moment its walsender holds the slot (start-up left out); the same WAL read by
   PostgreSQL 15's `pg_recvlogical` from a second slot of the same plugin, with the options
   wal2vec starts its stream with (`cdc.replication.plugins.OutputPlugin.start_options`).
3. wal2json_to_pgoutput: the ratios of the two plugins' figures.

    python bench/plugins.py --quick
    python bench/plugins.py [--rows N] [--updates N] [--keep-index] [--timeout S]
                            [--out PATH] [--workdir DIR]

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from cdc.config import BufferConfig
from cdc.replication.plugins import OutputPlugin, PluginName

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `bench` and the harness (`tests`) are not installed

from bench.common import (  # noqa: E402
    SERVER_EXTRA,
    SINK_TABLE,
    attempt,
    embedded_server,
    emit_report,
    environment,
    failed_parts,
    fake_endpoint,
    poll,
    quiet_warnings,
    rate,
    ratio,
    settled_stages,
    stop_all,
    sync_lsn,
    work_directory,
)
from bench.e2e import (  # noqa: E402
    ARTICLES,
    DIMENSIONS,
    INSERT_ARTICLE,
    INSERT_BATCH,
    SINK_INDEX,
    UPDATE_BATCH,
    Row,
    SinkProbe,
    ensure_publication,
    generate_updates,
    insert_rows,
    make_articles,
    stages,
    start_streaming,
    timed_inserts,
    wait_checkpoint,
    wal_bytes,
)
from tests import pg15  # noqa: E402
from tests.backends import Backend, deployment_on  # noqa: E402
from tests.harness import CdcProcess, Deployment  # noqa: E402
from tests.pg import PgServer  # noqa: E402

PLUGINS: tuple[PluginName, ...] = ("pgoutput", "wal2json")
PG_RECVLOGICAL = pg15.BIN / "pg_recvlogical"
# One START_REPLICATION option as `OutputPlugin.start_options` writes it: `name 'value'`
# (pgoutput) or `"name" 'value'` (wal2json), quotes in the value doubled.
OPTION = re.compile(r"""^"?(?P<name>[^"\s]+)"?\s+'(?P<value>(?:[^']|'')*)'$""")


# ---- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    rows: int
    updates: int
    timeout: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows inserted (default 20000, quick 2000)")
    parser.add_argument("--updates", type=int, help="non-content updates (200000, quick 20000)")
    parser.add_argument(
        "--keep-index",
        action="store_true",
        help="keep the sink's HNSW index during the inserts (its writes then dominate)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a couple of minutes")
    parser.add_argument("--timeout", type=float, help="seconds any one wait may take")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--workdir", type=Path, help="keep configs and cdc run logs here")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    quick = bool(args.quick)
    return Sizes(
        rows=args.rows or (2_000 if quick else 20_000),
        updates=args.updates or (20_000 if quick else 200_000),
        timeout=args.timeout or (120.0 if quick else 900.0),
    )


@dataclass
class Context:
    source: pg15.Pg15Server
    sink: PgServer
    base_url: str
    workdir: Path
    sizes: Sizes
    keep_index: bool
    articles: list[Row]
    source_version: int
    exit_codes: list[int | None] = field(default_factory=list)


# ---- servers and deployments ---------------------------------------------------------------


@contextlib.contextmanager
def source_server(base: Path) -> Iterator[pg15.Pg15Server]:
    """PostgreSQL 15 with the benchmarks' settings, stopped (and its files deleted) afterwards."""
    for reason in (pg15.missing(), pg15.wal2json_missing()):
        if reason is not None:
            raise RuntimeError(reason)
    server = pg15.start_server(base, SERVER_EXTRA)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def plugin_deployment(ctx: Context, plugin: PluginName) -> Iterator[Deployment]:
    """`articles` on PostgreSQL 15, the vectors on 18, read through `plugin`; every `cdc run`
    stopped on the way out, its exit code kept."""
    workdir = ctx.workdir / plugin
    workdir.mkdir(parents=True, exist_ok=True)
    backend = Backend(f"pg15-{plugin}", ctx.source, ctx.sink, plugin)
    with deployment_on(backend, ctx.base_url, workdir) as dep:
        dep.extra = {
            "embedding": {"dimensions": DIMENSIONS},
            "buffer": BufferConfig().model_dump(),
        }
        try:
            yield dep
        finally:
            ctx.exit_codes += stop_all(dep)


class SplitProbe(SinkProbe):
    """`SinkProbe` for a sink on another server: the checkpoint and the vectors through a
    connection to the sink (`conn`), the slot through one to the source."""

    def __init__(self, deployment: Deployment) -> None:
        self.conn = deployment.connect_sink()
        self.source = deployment.connect()
        self.slot = deployment.slot

    def close(self) -> None:
        self.conn.close()
        self.source.close()

    def caught_up(self, lsn: str) -> bool:
        row = self.conn.execute(
            "SELECT checkpoint_lsn >= %s::pg_lsn FROM cdc_state WHERE slot = %s", (lsn, self.slot)
        ).fetchone()
        if row and row[0]:
            return True
        row = self.source.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (lsn, self.slot),
        ).fetchone()
        return bool(row and row[0])

    def streaming(self) -> bool:
        row = self.source.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
        ).fetchone()
        return bool(row and row[0])


# ---- 1. inserts while streaming ------------------------------------------------------------


def inserts(ctx: Context, dep: Deployment, probe: SinkProbe) -> tuple[CdcProcess, dict[str, Any]]:
    process = start_streaming(dep, probe, ctx.sizes.timeout)
    if not ctx.keep_index:
        # A btree under the HNSW index's name: `cdc run` builds a missing index when it starts,
        # which would put the build (over a minute for 20,000 vectors here) into the restart
        # timed in part 2.
        dep.execute_sink(f"DROP INDEX {SINK_INDEX}")
        dep.execute_sink(f"CREATE INDEX {SINK_INDEX} ON {SINK_TABLE} (chunk)")
    result = timed_inserts(dep, probe, process, ctx.articles, ctx.sizes.timeout)
    return process, result


# ---- 2. non-content updates ----------------------------------------------------------------


def plugin_options(plugin: OutputPlugin, server_version: int) -> list[tuple[str, str]]:
    """The options wal2vec's START_REPLICATION gives `plugin`, as (name, value) pairs."""
    pairs = []
    for option in plugin.start_options(server_version):
        found = OPTION.match(option)
        if found is None:
            raise ValueError(f"cannot read the START_REPLICATION option {option!r}")
        pairs.append((found["name"], found["value"].replace("''", "'")))
    return pairs


def output_plugin(dep: Deployment) -> OutputPlugin:
    name: PluginName = "wal2json" if dep.plugin == "wal2json" else "pgoutput"
    return OutputPlugin(name, publication=dep.slot, tables=(ARTICLES.table,))


def stream_size(
    dep: Deployment, slot: str, endpos: str, options: list[tuple[str, str]]
) -> dict[str, int]:
    """What the plugin sends for the WAL up to `endpos`, read without consuming the slot:
    messages and payload bytes (the CopyData and XLogData headers around them not counted)."""
    flat = [text for pair in options for text in pair]
    with dep.connect() as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(octet_length(data)), 0) "
            "FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL, VARIADIC %s::text[])",
            (slot, endpos, flat),
        ).fetchone()
    assert row is not None
    return {"stream_messages": int(row[0]), "stream_bytes": int(row[1])}


def run_recvlogical(
    dep: Deployment, slot: str, endpos: str, options: list[tuple[str, str]], timeout: float
) -> float:
    """PostgreSQL 15's pg_recvlogical from `slot` to `endpos`, into /dev/null: its seconds,
    process start to exit."""
    command = [str(PG_RECVLOGICAL), "-d", dep.dsn, "--slot", slot, "--start", "--no-loop"]
    command += ["-f", "/dev/null", "--endpos", endpos]
    for name, value in options:
        command += ["-o", f"{name}={value}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pg_recvlogical exited with {done.returncode}: {done.stderr.strip()}")
    return seconds


@dataclass(frozen=True)
class Restart:
    process: CdcProcess
    startup: float  # from starting `cdc run` to its walsender holding the slot
    seconds: float  # from starting `cdc run` to its checkpoint passing the target


def timed_restart(dep: Deployment, probe: SinkProbe, endpos: str, timeout: float) -> Restart:
    """Start `cdc run` and time until it streams (its slot is active: start-up done) and until
    its checkpoint passes `endpos`."""
    started = time.perf_counter()
    process = dep.start()
    poll(probe.streaming, timeout, "cdc run to stream", process)
    streaming = time.perf_counter()
    wait_checkpoint(probe, process, endpos, timeout, 0.01)
    return Restart(process, streaming - started, time.perf_counter() - started)


def non_content_updates(
    ctx: Context, dep: Deployment, probe: SinkProbe, process: CdcProcess | None
) -> dict[str, Any]:
    timeout = ctx.sizes.timeout
    result: dict[str, Any] = {}
    if process is not None:
        process.stop()
    plugin = output_plugin(dep)
    options = plugin_options(plugin, ctx.source_version)
    if plugin.uses_publication:
        ensure_publication(dep)
    recv_slot = f"{dep.slot}_recv"
    dep.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (recv_slot, plugin.name))
    start_lsn = dep.current_lsn()
    changes = generate_updates(dep, len(ctx.articles), ctx.sizes.updates)
    endpos = sync_lsn(dep)
    result |= {"changes": changes, "wal_bytes": wal_bytes(dep, start_lsn, endpos)}
    result |= stream_size(dep, recv_slot, endpos, options)
    result["stream_bytes_per_change"] = round(result["stream_bytes"] / changes, 1)
    recv_seconds = run_recvlogical(dep, recv_slot, endpos, options, timeout)
    result |= {
        "pg_recvlogical_options": [f"{name}={value}" for name, value in options],
        "pg_recvlogical_seconds": round(recv_seconds, 3),
        "pg_recvlogical_changes_per_s": rate(changes, recv_seconds),
    }
    if process is None:
        return result
    backlog = timed_restart(dep, probe, endpos, timeout)
    after = settled_stages(backlog.process)
    backlog.process.stop()
    seconds, streaming = backlog.seconds, backlog.seconds - backlog.startup
    return result | {
        "wal2vec_seconds": round(seconds, 3),
        "wal2vec_changes_per_s": rate(changes, seconds),
        "wal2vec_startup_seconds": round(backlog.startup, 3),
        "wal2vec_streaming_seconds": round(streaming, 3),
        "wal2vec_changes_per_s_streaming": rate(changes, streaming),
        "wal2vec_stages": stages({}, after, seconds),
        "ratio_wal2vec_to_pg_recvlogical": ratio(
            rate(changes, seconds), result["pg_recvlogical_changes_per_s"]
        ),
        "ratio_wal2vec_streaming_to_pg_recvlogical": ratio(
            rate(changes, streaming), result["pg_recvlogical_changes_per_s"]
        ),
    }


# ---- one plugin: 1 and 2 in order ----------------------------------------------------------


def measure_plugin(ctx: Context, plugin: PluginName, results: dict[str, Any]) -> None:
    with plugin_deployment(ctx, plugin) as dep:
        probe = SplitProbe(dep)
        try:
            _plugin_parts(ctx, dep, probe, results)
        finally:
            probe.close()


def _plugin_parts(ctx: Context, dep: Deployment, probe: SinkProbe, results: dict[str, Any]) -> None:
    started: list[CdcProcess] = []

    def insert_part() -> dict[str, Any]:
        process, result = inserts(ctx, dep, probe)
        started.append(process)
        return result

    attempt(results, f"insert_{dep.plugin}", insert_part)
    process = started[0] if started else None
    if process is None:
        # `cdc run` failed: stop what runs, and make sure the rows are there so that
        # pg_recvlogical still has updates to read.
        for running in dep.processes:
            running.terminate()
        with dep.connect() as conn:
            insert_rows(
                conn, ctx.articles, INSERT_BATCH, INSERT_ARTICLE + " ON CONFLICT DO NOTHING"
            )
    attempt(
        results,
        f"non_content_updates_{dep.plugin}",
        lambda: non_content_updates(ctx, dep, probe, process),
    )


# ---- the report ----------------------------------------------------------------------------


def field_of(results: dict[str, Any], part: str, key: str) -> Any:
    value = results.get(part)
    return value.get(key) if isinstance(value, dict) else None


def headline(results: dict[str, Any]) -> dict[str, Any]:
    inserts_per_s = {p: field_of(results, f"insert_{p}", "rows_per_s") for p in PLUGINS}
    updates = {p: results.get(f"non_content_updates_{p}") for p in PLUGINS}

    def across(key: str) -> float | None:
        return ratio(
            field_of(results, "non_content_updates_wal2json", key),
            field_of(results, "non_content_updates_pgoutput", key),
        )

    return {
        "insert_rows_per_s": inserts_per_s,
        "non_content_updates": updates,
        "wal2json_to_pgoutput": {
            "insert_rows_per_s": ratio(inserts_per_s["wal2json"], inserts_per_s["pgoutput"]),
            "wal2vec_update_changes_per_s": across("wal2vec_changes_per_s"),
            "wal2vec_update_changes_per_s_streaming": across("wal2vec_changes_per_s_streaming"),
            "pg_recvlogical_changes_per_s": across("pg_recvlogical_changes_per_s"),
            "stream_bytes": across("stream_bytes"),
        },
    }


def source_environment(server: pg15.Pg15Server) -> dict[str, Any]:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    package = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "postgresql-15-wal2json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "source_postgresql": version[0] if version else None,
        "wal2json_package": package.stdout.strip() or None,
    }


def settings_of(ctx: Context) -> dict[str, Any]:
    return {
        "rows": ctx.sizes.rows,
        "updates": ctx.sizes.updates,
        "sink_index": "hnsw" if ctx.keep_index else "a btree placeholder under the hnsw name",
        "dimensions": DIMENSIONS,
        "insert_batch": INSERT_BATCH,
        "update_batch": UPDATE_BATCH,
        "buffer": BufferConfig().model_dump(),
        "servers": SERVER_EXTRA,
        "source": "Debian PostgreSQL 15 on 127.0.0.1",
        "sink": "embedded PostgreSQL 18 with pgvector, unix socket (sink.dsn)",
        "endpoint": "tests.fakes.openai_server in its own process, no latency",
    }


def benchmark(workdir: Path, sizes: Sizes, keep_index: bool) -> dict[str, Any]:
    started = time.perf_counter()
    with (
        source_server(workdir / "pg15") as source,
        embedded_server(workdir / "pg18") as sink,
        fake_endpoint(DIMENSIONS) as (url, _pid),
    ):
        with psycopg.connect(source.dsn()) as conn:
            version = conn.info.server_version
        articles = make_articles(1, sizes.rows)
        ctx = Context(source, sink, url, workdir, sizes, keep_index, articles, version)
        report: dict[str, Any] = {"environment": environment(sink) | source_environment(source)}
        report["settings"] = settings_of(ctx)
        setup = time.perf_counter() - started
        parts: dict[str, Any] = {}
        for plugin in PLUGINS:
            measure_plugin(ctx, plugin, parts)
    parts["wall_seconds"]["servers_and_endpoint_start"] = round(setup, 1)
    report |= headline(parts)
    report["details"] = {k: v for k, v in parts.items() if not k.startswith("non_content_updates_")}
    report["cdc_run_exit_codes"] = ctx.exit_codes
    report["errors"] = failed_parts(parts)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_warnings()
    with work_directory(args.workdir) as workdir:
        report = benchmark(workdir, sizes_from(args), bool(args.keep_index))
    emit_report(report, args.out)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
