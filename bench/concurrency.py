"""Embedding concurrency: end-to-end rows/s of `cdc run` at 1536 dimensions against an endpoint
that takes 100 ms a request, for `embedding.concurrency` 1, 2, 4 and 8. Prints one JSON object.

The same rows are inserted while `cdc run` streams, once per concurrency, each into a fresh
database and slot; the sink's HNSW index is dropped first, so the figure is the embedding path's
(index inserts at 1536 dimensions run ~100 rows/s here whatever the concurrency; see e2e.py).
Tokens per request come from `cdc run`'s own counters.

    python bench/concurrency.py --quick
    python bench/concurrency.py [--rows N] [--latency S] [--batch-size N] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `bench` and the harness (`tests`) are not installed

from bench.common import (  # noqa: E402
    embedded_server,
    emit_report,
    environment,
    fake_endpoint,
    quiet_warnings,
    rate,
    ratio,
    scrape,
    settled_stages,
    stop_all,
    sync_lsn,
)
from bench.e2e import (  # noqa: E402
    ARTICLES,
    ARTICLES_DDL,
    DIMENSIONS,
    INSERT_BATCH,
    SINK_INDEX,
    SinkProbe,
    insert_rows,
    make_articles,
    stages,
    start_streaming,
    wait_checkpoint,
)
from tests.harness import Deployment  # noqa: E402
from tests.pg import PgServer, unique_slot  # noqa: E402

CONCURRENCY = (1, 2, 4, 8)
OK_REQUESTS = "cdc_embedding_requests_total"
TOKENS = "cdc_embedding_tokens_total"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows inserted per run (default 8000, quick 1000)")
    parser.add_argument("--latency", type=float, default=0.1, help="endpoint seconds per request")
    parser.add_argument(
        "--batch-size", type=int, default=128, help="embedding.batch_size: inputs per request"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds any wait may take")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser.parse_args(argv)


def embedding_counts(name: str, line: str) -> bool:
    """`cdc run`'s successful embedding requests and the tokens they carried."""
    return (name == OK_REQUESTS and 'status="ok"' in line) or name == TOKENS


def one_run(
    server: PgServer, base_url: str, workdir: Path, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    database = server.create_database()
    server.execute("CREATE EXTENSION IF NOT EXISTS vector", database=database)
    dep = Deployment(
        dsn=server.dsn(database),
        slot=unique_slot(),
        base_url=base_url,
        workdir=workdir / f"concurrency-{concurrency}",
        tables=[ARTICLES],
        extra={
            "embedding": {
                "dimensions": DIMENSIONS,
                "concurrency": concurrency,
                "batch_size": args.batch_size,
            }
        },
    )
    dep.workdir.mkdir(parents=True, exist_ok=True)
    dep.execute(ARTICLES_DDL)
    probe = SinkProbe(dep)
    try:
        process = start_streaming(dep, probe, args.timeout)
        dep.execute(f"DROP INDEX {SINK_INDEX}")
        rows = make_articles(1, args.rows)
        before, stage_before = scrape(process, embedding_counts), scrape(process)
        with dep.connect() as conn:
            started = time.perf_counter()
            insert_rows(conn, rows, INSERT_BATCH)
            wait_checkpoint(probe, process, sync_lsn(dep), args.timeout)
            seconds = time.perf_counter() - started
        stage_after = settled_stages(process)
        after = scrape(process, embedding_counts)
        if probe.vector_count() != len(rows):
            raise AssertionError(f"{probe.vector_count()} vectors for {len(rows)} rows")
        requests = after.get(OK_REQUESTS, 0) - before.get(OK_REQUESTS, 0)
        tokens = after.get(TOKENS, 0) - before.get(TOKENS, 0)
        return {
            "concurrency": concurrency,
            "rows": len(rows),
            "seconds": round(seconds, 3),
            "rows_per_s": rate(len(rows), seconds),
            "requests": int(requests),
            "inputs_per_request": round(len(rows) / requests, 1) if requests else None,
            "tokens_per_request": round(tokens / requests, 1) if requests else None,
            "stages": stages(stage_before, stage_after, seconds),
        }
    finally:
        probe.close()
        stop_all(dep)
        server.drop_database(database)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.rows = args.rows or (1000 if args.quick else 8000)
    quiet_warnings()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wal2vec-bench-") as temp:
        workdir = Path(temp)
        with (
            embedded_server(workdir / "pg") as server,
            fake_endpoint(DIMENSIONS, args.latency) as (url, _),
        ):
            env = environment(server)
            for concurrency in CONCURRENCY:
                runs.append(one_run(server, url, workdir, concurrency, args))
    baseline = runs[0]["rows_per_s"]
    report = {
        "benchmark": "concurrency",
        "dimensions": DIMENSIONS,
        "endpoint_latency_s": args.latency,
        "batch_size": args.batch_size,
        "environment": env,
        "runs": runs,
        "speedup_vs_concurrency_1": {
            str(run["concurrency"]): ratio(run["rows_per_s"], baseline) for run in runs
        },
    }
    emit_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
