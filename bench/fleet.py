"""Embedding fleet: rows/s embedded through `OpenAIProvider` over 1, 2 and 4 endpoints that take
100 ms a request, each endpoint the fake server in a process of its own; then the same fleet of
4 with one endpoint killed (SIGKILL) halfway through. Prints one JSON object.

The provider is driven as `cdc run` drives it: `--workers` callers (the snapshot's writers, the
stream) each embed one batch of `--batch-rows` texts at a time, with their token counts, cut
into requests of `--batch-size` inputs; `embedding.concurrency` (`--concurrency`) is per
endpoint. Ratios are against 1 endpoint, measured in the same run. The kill run reports the
longest gap between two completed batches around the kill against the median gap, and its
total time against what the rows before and after the kill take at 4 and at 3 endpoints' rate.

    python bench/fleet.py --quick
    python bench/fleet.py [--rows N] [--latency S] [--concurrency N] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `bench` and the harness (`tests`) are not installed

from bench.common import emit_report, fake_endpoint, rate, ratio, vocabulary  # noqa: E402
from cdc.embedding.openai_compat import OpenAIProvider  # noqa: E402
from cdc.embedding.providers import RetryPolicy  # noqa: E402
from cdc.embedding.tokens import Tokenizer  # noqa: E402

FLEETS = (1, 2, 4)
# Small vectors and short texts: the fake computes them in Python on the same two cores, and
# what is measured is the fleet's placement, not the fake's arithmetic.
DIMENSIONS = 64
WORDS_PER_TEXT = 12
MODEL = "text-embedding-3-small"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows per run (default 6000, quick 1500)")
    parser.add_argument("--latency", type=float, default=0.1, help="endpoint seconds a request")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="requests in flight per endpoint"
    )
    parser.add_argument("--batch-size", type=int, default=25, help="inputs per request")
    parser.add_argument("--batch-rows", type=int, default=100, help="texts per embed call")
    parser.add_argument("--workers", type=int, default=4, help="embed calls at once")
    parser.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser.parse_args(argv)


@dataclass
class Observed:
    """What the provider reported while a run went: requests by endpoint and outcome, and when
    an endpoint left the rotation."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    out_at: dict[str, float] = field(default_factory=dict)

    def request(self, status: str, _seconds: float, endpoint: str) -> None:
        self.requests[(endpoint, status)] += 1

    def endpoint(self, name: str, up: bool) -> None:
        if not up:
            self.out_at.setdefault(name, time.perf_counter())

    def by_endpoint(self) -> dict[str, dict[str, int]]:
        report: dict[str, dict[str, int]] = {}
        for (endpoint, status), count in sorted(self.requests.items()):
            report.setdefault(endpoint, {})[status] = count
        return report


@dataclass
class Batches:
    """The texts to embed, cut into the callers' batches, with their token counts."""

    texts: list[list[str]]
    counts: list[list[int]]

    @classmethod
    def make(cls, rows: int, per_batch: int, tokenizer: Tokenizer) -> Batches:
        rng = random.Random(7)
        words = vocabulary(rng)
        texts = [" ".join(rng.choices(words, k=WORDS_PER_TEXT)) for _ in range(rows)]
        counts = tokenizer.count(texts)
        cut = range(0, rows, per_batch)
        return cls(
            [texts[i : i + per_batch] for i in cut], [counts[i : i + per_batch] for i in cut]
        )

    @property
    def rows(self) -> int:
        return sum(len(batch) for batch in self.texts)


def make_provider(urls: list[str], args: argparse.Namespace, seen: Observed) -> OpenAIProvider:
    return OpenAIProvider(
        model=MODEL,
        dimensions=DIMENSIONS,
        api_key=None,
        base_url=urls,
        max_batch_inputs=args.batch_size,
        concurrency=args.concurrency,
        retry=RetryPolicy(max_attempts=4),  # the defaults' backoff: 0.5 s base, 30 s cap
        send_dimensions=True,
        on_request=seen.request,
        on_endpoint=seen.endpoint,
    )


async def embed_all(
    provider: OpenAIProvider, batches: Batches, workers: int, done: list[tuple[float, int]]
) -> None:
    """`workers` callers embedding the batches in turn; each completion (time, rows) in `done`."""
    queue = iter(range(len(batches.texts)))

    async def worker() -> None:
        for index in queue:
            result = await provider.embed(batches.texts[index], batches.counts[index])
            if result.errors or any(vector is None for vector in result.vectors):
                raise RuntimeError(f"batch {index} came back incomplete: {result.errors}")
            done.append((time.perf_counter(), len(batches.texts[index])))

    await asyncio.gather(*(worker() for _ in range(workers)))


def one_run(
    urls: list[str], batches: Batches, args: argparse.Namespace, kill: int | None = None
) -> dict[str, Any]:
    """Embed every batch over `urls`; with `kill`, SIGKILL that pid once half the rows are in."""
    seen = Observed()
    done: list[tuple[float, int]] = []
    killed_at: list[float] = []

    async def go() -> float:
        provider = make_provider(urls, args, seen)
        try:
            warm = Batches.make(len(urls) * args.concurrency, 1, provider.tokenizer)
            await embed_all(provider, warm, len(warm.texts), [])  # connections open, untimed
            seen.requests.clear()
            started = time.perf_counter()
            killer = asyncio.ensure_future(kill_halfway(kill, batches.rows, done, killed_at))
            await embed_all(provider, batches, args.workers, done)
            await killer
            return started
        finally:
            await provider.aclose()

    started = asyncio.run(go())
    seconds = max(at for at, _ in done) - started
    run: dict[str, Any] = {
        "endpoints": len(urls),
        "rows": batches.rows,
        "seconds": round(seconds, 3),
        "rows_per_s": rate(batches.rows, seconds),
        "requests": seen.by_endpoint(),
        "batch_gaps": gaps(started, done),
    }
    if killed_at:
        run["killed_after_s"] = round(killed_at[0] - started, 3)
        run["out_of_rotation_after_kill_ms"] = {
            name: round((at - killed_at[0]) * 1000, 1) for name, at in seen.out_at.items()
        }
    return run


async def kill_halfway(
    pid: int | None, rows: int, done: list[tuple[float, int]], killed_at: list[float]
) -> None:
    if pid is None:
        return
    while sum(count for _, count in done) < rows // 2:
        await asyncio.sleep(0.005)  # the polling interval of a wait on the run's own progress
    os.kill(pid, signal.SIGKILL)
    killed_at.append(time.perf_counter())


def gaps(started: float, done: list[tuple[float, int]]) -> dict[str, float]:
    """Time between consecutive batch completions (the first from the start), in ms."""
    times = [started, *sorted(at for at, _ in done)]
    between = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    return {
        "median_ms": round(statistics.median(between), 1),
        "max_ms": round(max(between), 1),
    }


def kill_report(kill: dict[str, Any], fleet_rate: float, endpoints: int) -> dict[str, Any]:
    """The kill run against expectation: rows before the kill at the whole fleet's rate, the
    rest at the survivors' share of it."""
    before = fleet_rate * kill["killed_after_s"]
    after = max(kill["rows"] - before, 0.0)
    expected = kill["killed_after_s"] + after / (fleet_rate * (endpoints - 1) / endpoints)
    gap = kill["batch_gaps"]
    return {
        "expected_seconds": round(expected, 3),
        "seconds_vs_expected": ratio(kill["seconds"], expected),
        "longest_gap_vs_median": ratio(gap["max_ms"], gap["median_ms"]),
    }


@contextlib.contextmanager
def endpoints(count: int, latency: float) -> Iterator[list[tuple[str, int]]]:
    """`count` fake endpoints, each in its own process; (URL, pid) of each."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(fake_endpoint(DIMENSIONS, latency)) for _ in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.rows = args.rows or (1500 if args.quick else 6000)
    batches = Batches.make(args.rows, args.batch_rows, Tokenizer.for_model(MODEL))
    runs: list[dict[str, Any]] = []
    with endpoints(max(FLEETS), args.latency) as fleet:
        urls = [url for url, _ in fleet]
        for size in FLEETS:
            runs.append(one_run(urls[:size], batches, args))
        biggest = max(FLEETS)
        kill = one_run(urls[:biggest], batches, args, kill=fleet[-1][1])
    baseline = runs[0]["rows_per_s"]
    report = {
        "benchmark": "fleet",
        "endpoint_latency_s": args.latency,
        "concurrency_per_endpoint": args.concurrency,
        "batch_size": args.batch_size,
        "batch_rows": args.batch_rows,
        "workers": args.workers,
        "dimensions": DIMENSIONS,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "runs": runs,
        "speedup_vs_1_endpoint": {
            str(r["endpoints"]): ratio(r["rows_per_s"], baseline) for r in runs
        },
        "one_killed_of": {
            "run": kill,
            **kill_report(kill, runs[-1]["rows_per_s"], biggest),
        },
    }
    emit_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
