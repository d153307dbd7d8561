"""Issue 14's table in one run: wal2vec against PostgreSQL's own limits; prints one JSON object.

Everything on this machine, started and stopped by this script (each process by its own pid):
the embedded PostgreSQL 18 with pgvector (unix socket, a temporary data directory), an
OpenAI-compatible endpoint on 127.0.0.1 that serves precomputed vectors (`bench/fast_endpoint.py`,
its own ceiling measured first), and `cdc run` as a subprocess. Rows are a 6-word title and a
~550-character body, at 1536 dimensions. The rows of the table (`table` in the JSON):

a. rows/s streamed into the sink with its HNSW index, against one session's binary COPY of the
   same vectors into an empty table with the same index;
b. the same without the index, against binary COPY without it;
c. b's figure against pgai's vectorizer worker on the same rows (batch 500, concurrency 4,
   no index; `bench/pgai_worker.py`), when installed in a separate venv (`--pgai-venv`), else
   "not installed";
d. non-content updates through the pipeline, against `pg_recvlogical` reading the same WAL to
   /dev/null;
e. commit -> vector for a single row on an idle streamer, one row at a time: p50, p95;

and rows a and b again with `sink.writers` 2 and 4 (`sink_writers`).

    python bench/throughput.py --quick      # 1,000 rows, 20,000 updates: ~1.5 minutes
    python bench/throughput.py              # 5,000 rows, 200,000 updates: ~4 minutes on 2 CPUs
    python bench/throughput.py --out t.json --workdir keep/

The parts are `bench/e2e.py`'s (timed inserts, commit to vector, non-content updates, COPY);
see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `bench` and the harness (`tests`) are not installed

from bench import e2e  # noqa: E402
from bench import pgai_worker as pgai  # noqa: E402
from bench.common import (  # noqa: E402
    SERVER_EXTRA,
    attempt,
    embedded_server,
    emit_report,
    endpoint_process,
    environment,
    failed_parts,
    quiet_warnings,
    ratio,
    work_directory,
)
from bench.fast_endpoint import cheap_vector, measure_ceiling  # noqa: E402
from cdc.config import BufferConfig  # noqa: E402

BODY_WORDS = 71  # ~550 characters
PGAI_ENV = "WAL2VEC_BENCH_PGAI_VENV"
# sink.writers reported beside the one-writer runs (rows a and b).
MORE_WRITERS = (2, 4)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows inserted (default 5000, quick 1000)")
    parser.add_argument("--updates", type=int, help="non-content updates (200000, quick 20000)")
    parser.add_argument("--samples", type=int, help="commit-to-vector samples (30, quick 10)")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--max-age", type=float, help="buffer.max_age for cdc run (its default)")
    parser.add_argument("--timeout", type=float, help="seconds any one wait may take")
    parser.add_argument(
        "--pgai-venv",
        type=Path,
        default=os.environ.get(PGAI_ENV) or None,
        help=f"a venv with pgai installed (or env {PGAI_ENV}); else reported as not installed",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--workdir", type=Path, help="keep configs and cdc run logs here")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> e2e.Sizes:
    quick = bool(args.quick)
    rows = args.rows or (1000 if quick else 5000)
    return e2e.Sizes(
        rows=rows,
        updates=args.updates or (20_000 if quick else 200_000),
        index_copy_rows=rows,  # the same vectors into the same index
        samples=args.samples or (10 if quick else 30),
        timeout=args.timeout or (120.0 if quick else 900.0),
    )


# ---- the parts -----------------------------------------------------------------------------


def endpoint_ceiling(url: str, texts: list[str]) -> dict[str, Any]:
    """What the endpoint serves when asked directly: batches as large as a 500-row
    transaction, and single inputs (an idle streamer's requests)."""
    return {
        "batch_500": measure_ceiling(url, texts, 500),
        "batch_1": measure_ceiling(url, texts, 1, seconds=2.0),
    }


def copy_baseline(ctx: e2e.Context) -> dict[str, Any]:
    """One session's binary COPY of the vectors the endpoint serves for the same rows."""
    rows = e2e.sink_rows_for(ctx.articles, vector_of=cheap_vector)
    database = ctx.server.create_database()
    try:
        with e2e.sink_copy_connection(ctx.server.dsn(database)) as conn:
            return {
                "without_index": e2e.copy_variant(conn, "copy_plain", rows, index=False),
                "with_index": e2e.copy_variant(conn, "copy_hnsw", rows, index=True),
            }
    finally:
        ctx.server.drop_database(database)


def streaming_with_index(ctx: e2e.Context, results: dict[str, Any]) -> None:
    """Inserts into the indexed sink, then commit -> vector on the now idle streamer, then the
    non-content updates (which stop it and read the same WAL with pg_recvlogical)."""
    with e2e.deployment(ctx, "with-index") as dep:
        probe = e2e.SinkProbe(dep)
        try:
            started: list[e2e.CdcProcess] = []

            def inserts() -> dict[str, Any]:
                process, result = e2e.insert_variant(ctx, dep, probe, keep_index=True)
                started.append(process)
                return result

            attempt(results, "insert_with_index", inserts)
            process = started[0] if started else None
            if process is not None:
                extra = e2e.make_articles(
                    len(ctx.articles) + 1, ctx.sizes.samples, seed=11, body_words=BODY_WORDS
                )
                attempt(
                    results,
                    "commit_to_vector_ms",
                    lambda: e2e.commit_to_vector(dep, probe, process, extra, ctx.sizes.timeout),
                )
            else:
                with dep.connect() as conn:
                    e2e.insert_rows(
                        conn,
                        ctx.articles,
                        e2e.INSERT_BATCH,
                        e2e.INSERT_ARTICLE + " ON CONFLICT DO NOTHING",
                    )
            attempt(
                results,
                "non_content_updates",
                lambda: e2e.non_content_updates(ctx, dep, probe, process),
            )
        finally:
            probe.close()


def more_writers(ctx: e2e.Context, writers: int, keep_index: bool) -> dict[str, Any]:
    """The inserts again, applied by `writers` parallel sink writers."""
    name = f"{'with' if keep_index else 'without'}-index-writers-{writers}"
    with e2e.deployment(ctx, name, writers=writers) as dep:
        probe = e2e.SinkProbe(dep)
        try:
            _, result = e2e.insert_variant(ctx, dep, probe, keep_index=keep_index)
            return result
        finally:
            probe.close()


def pgai_worker(ctx: e2e.Context, venv: Path | None) -> dict[str, Any]:
    """pgai's vectorizer worker on the no-index run's rows, if installed in `venv` (this bench
    never installs it); else why not, as the row's status."""
    found = pgai.find_venv(venv)
    if not isinstance(found, pgai.PgaiVenv):
        return found
    return pgai.measure(found, ctx)


# ---- the report ----------------------------------------------------------------------------


def part(results: dict[str, Any], *keys: str) -> Any:
    value: Any = results
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def table(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's table, a row per figure."""
    insert_index = part(results, "insert_with_index", "rows_per_s")
    insert_plain = part(results, "insert_without_index", "rows_per_s")
    copy_index = part(results, "copy_baseline", "with_index", "rows_per_s")
    copy_plain = part(results, "copy_baseline", "without_index", "rows_per_s")
    updates = results.get("non_content_updates") or {}
    latency = results.get("commit_to_vector_ms") or {}
    pgai = results.get("pgai_worker") or {}
    return {
        "a_streamed_with_hnsw_index": {
            "wal2vec_rows_per_s": insert_index,
            "reference": "one session's binary COPY of the same vectors into the same index",
            "reference_rows_per_s": copy_index,
            "ratio": ratio(insert_index, copy_index),
            "aim": ">= 1.0",
        },
        "b_streamed_without_index": {
            "wal2vec_rows_per_s": insert_plain,
            "reference": "binary COPY of the same vectors",
            "reference_rows_per_s": copy_plain,
            "ratio": ratio(insert_plain, copy_plain),
            "aim": ">= 0.5",
        },
        "c_against_pgai_worker": {
            "wal2vec_rows_per_s": insert_plain,
            "reference": "pgai's vectorizer worker",
            "pgai": pgai,
            "ratio": ratio(insert_plain, pgai.get("rows_per_s")),
            "ratio_by_sink_writers": {
                writers: ratio(run["rows_per_s"], pgai.get("rows_per_s"))
                for writers, run in by_writers(results, "insert_without_index", None).items()
            },
            "aim": ">= 10x",
        },
        "d_non_content_updates": {
            "wal2vec_changes_per_s": updates.get("wal2vec_changes_per_s"),
            "wal2vec_changes_per_s_excluding_startup": updates.get(
                "wal2vec_changes_per_s_excluding_startup"
            ),
            "reference": "pg_recvlogical reading the same WAL to /dev/null",
            "reference_changes_per_s": updates.get("pg_recvlogical_changes_per_s"),
            "ratio": updates.get("ratio_wal2vec_to_pg_recvlogical"),
            "aim": ">= 0.5",
        },
        "e_commit_to_vector_idle_ms": {
            "p50": latency.get("median"),
            "p95": latency.get("p95"),
            "samples": latency.get("samples"),
            "aim": "p50 <= 50",
        },
        "sink_writers": {
            "with_index": by_writers(results, "insert_with_index", copy_index),
            "without_index": by_writers(results, "insert_without_index", copy_plain),
        },
    }


def by_writers(results: dict[str, Any], name: str, reference: float | None) -> dict[str, Any]:
    """Rows/s and the ratio to COPY for each `sink.writers` measured."""
    runs = {"1": part(results, name, "rows_per_s")}
    for writers in MORE_WRITERS:
        runs[str(writers)] = part(results, f"{name}_writers_{writers}", "rows_per_s")
    return {
        writers: {"rows_per_s": rows, "ratio_to_copy": ratio(rows, reference)}
        for writers, rows in runs.items()
    }


def settings_of(sizes: e2e.Sizes, buffer: dict[str, Any], mean_chars: float) -> dict[str, Any]:
    return {
        "rows": sizes.rows,
        "updates": sizes.updates,
        "commit_to_vector_samples": sizes.samples,
        "dimensions": e2e.DIMENSIONS,
        "mean_content_chars": round(mean_chars, 1),
        "insert_batch": e2e.INSERT_BATCH,
        "update_batch": e2e.UPDATE_BATCH,
        "buffer": buffer,
        "server": SERVER_EXTRA,
        "endpoint": "bench.fast_endpoint in its own process: precomputed vectors, base64",
    }


def run_parts(ctx: e2e.Context, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    texts = [e2e.article_content(row) for row in ctx.articles[:500]]
    attempt(results, "endpoint_ceiling", lambda: endpoint_ceiling(ctx.base_url, texts))
    attempt(results, "pgai_worker", lambda: pgai_worker(ctx, args.pgai_venv))
    attempt(results, "copy_baseline", lambda: copy_baseline(ctx))
    attempt(results, "insert_without_index", lambda: e2e.insert_without_index(ctx))
    streaming_with_index(ctx, results)
    for writers in MORE_WRITERS:
        for keep_index in (True, False):
            name = f"insert_{'with' if keep_index else 'without'}_index_writers_{writers}"
            attempt(
                results,
                name,
                lambda w=writers, k=keep_index: more_writers(ctx, w, k),
            )
    return results


def benchmark(workdir: Path, sizes: e2e.Sizes, args: argparse.Namespace) -> dict[str, Any]:
    buffer = BufferConfig().model_dump()
    if args.max_age is not None:
        buffer["max_age"] = args.max_age
    started = time.perf_counter()
    articles = e2e.make_articles(1, sizes.rows, body_words=BODY_WORDS)
    mean_chars = sum(len(e2e.article_content(row)) for row in articles) / len(articles)
    endpoint_args = ["--port", "0", "--dimensions", str(e2e.DIMENSIONS)]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(embedded_server(workdir / "pg"))
        url, _ = stack.enter_context(endpoint_process("bench.fast_endpoint", endpoint_args))
        ctx = e2e.Context(server, url, workdir, sizes, buffer, e2e.Profiler(None), articles)
        report: dict[str, Any] = {"environment": environment(server)}
        report["settings"] = settings_of(sizes, buffer, mean_chars)
        parts = run_parts(ctx, args)
    report["table"] = table(parts)
    report["endpoint_ceiling"] = parts.get("endpoint_ceiling")
    report["details"] = {k: v for k, v in parts.items() if k != "endpoint_ceiling"}
    report["cdc_run_exit_codes"] = ctx.exit_codes
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
