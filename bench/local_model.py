"""The local model on this machine's CPUs: texts per second by batch size and thread count.

`embedding.provider: local` runs all-MiniLM-L6-v2 (the `[local]` extra) through wal2vec's own
`LocalProvider`, as `cdc run` does: its worker thread, its token counting, forward passes of
`embedding.batch_size` texts, torch on `embedding.threads` threads. The texts are the chunks
`cdc demo` embeds (Python's documentation, cut by the model's own tokenizer into chunks of at
most 256 word pieces), the first `--texts` of them. Each combination of `--threads` and
`--batches` loads the model afresh (not timed), warms up on one batch, then embeds the texts;
`--rounds` rounds go over every combination in turn, and each one's best round counts (the
machine is shared: slower rounds are other work).
Ratios are against the defaults measured in the same run: batches of 32 on the CPUs the
process may use.

    python bench/local_model.py [--quick] [--texts N] [--batches 16,32,64,128] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cdc.commands.demo import corpus, demo_settings  # noqa: E402
from cdc.content import make_chunks  # noqa: E402
from cdc.embedding.factory import chunk_rules  # noqa: E402
from cdc.embedding.local import LocalProvider, available_cpus, import_torch  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
DEFAULT_BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 texts, batches 16, 32, 1 round")
    parser.add_argument("--texts", type=int, help="chunks embedded per round (default 128)")
    parser.add_argument("--batches", help="batch sizes, comma-separated (default 16,32,64,128)")
    parser.add_argument("--threads", help="thread counts, comma-separated (default 1,2)")
    parser.add_argument("--rounds", type=int, help="timed rounds, the best counts (default 2)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    texts = demo_chunks(args.texts or (48 if args.quick else 128))
    batches = numbers(args.batches or ("16,32" if args.quick else "16,32,64,128"))
    threads = numbers(args.threads or "1,2")
    rounds = args.rounds or (1 if args.quick else 2)
    load_before = os.getloadavg()
    # Keyed (threads, batch size); the defaults: batches of 32 on the CPUs it may use.
    default = (available_cpus(), DEFAULT_BATCH)
    keys = sorted({(t, b) for t in threads for b in batches} | {default})
    timings: dict[tuple[int, int], list[Timing]] = {key: [] for key in keys}
    # Round after round over every configuration, so load from other work on a shared
    # machine falls on all of them alike; the best round of each counts.
    for _ in range(rounds):
        for key in keys:
            timings[key].append(measure(texts, batch_size=key[1], threads=key[0]))
    runs = {key: best_of(key, found, len(texts)) for key, found in timings.items()}
    baseline = runs[default]["texts_per_s"]
    for run in runs.values():
        run["ratio_to_default"] = round(run["texts_per_s"] / baseline, 3)
    result = {
        "model": MODEL,
        "texts": len(texts),
        "word_pieces": sum(count_pieces(texts)),
        "default": {"threads": default[0], "batch_size": default[1]},
        "rounds": rounds,
        "runs": [runs[key] for key in keys],
        "best": max(runs.values(), key=lambda run: run["texts_per_s"]),
        "environment": {**environment(), "load_average_before": [round(x, 2) for x in load_before]},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def demo_chunks(count: int) -> list[str]:
    """The first `count` chunks `cdc demo` embeds, cut as it cuts them."""
    settings = demo_settings("postgresql://bench@127.0.0.1/bench")
    table = settings.tables[0]
    rule = chunk_rules(settings)[table.table]
    chunks = [
        chunk.text
        for _, title, body in corpus()
        for chunk in make_chunks(table.content.render((title, body)), rule)
    ]
    return chunks[:count]


def count_pieces(texts: list[str]) -> list[int]:
    """Word pieces of each text as the model counts them ([CLS] and [SEP] included)."""
    settings = demo_settings("postgresql://bench@127.0.0.1/bench")
    return chunk_rules(settings)[settings.tables[0].table].tokenizer.count(texts)


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    cpu_seconds: float  # the whole process's, torch's threads included
    word_pieces: int
    forward_passes: int


def measure(texts: list[str], *, batch_size: int, threads: int) -> Timing:
    """One timed round of one configuration, through a provider of its own (its model load
    and a warm-up pass are not timed)."""
    provider = LocalProvider(
        model=MODEL, dimensions=384, batch_size=batch_size, device="cpu", threads=threads
    )
    try:
        asyncio.run(provider.embed(texts[:batch_size]))  # warm-up: allocations, caches
        started, cpu = time.perf_counter(), time.process_time()
        result = asyncio.run(provider.embed(texts))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert all(vector is not None for vector in result.vectors)
    finally:
        asyncio.run(provider.aclose())
    rate = len(texts) / seconds
    print(f"threads {threads}, batch {batch_size}: {rate:.1f} texts/s", file=sys.stderr)
    return Timing(seconds, cpu, result.tokens, result.requests)


def best_of(key: tuple[int, int], timings: list[Timing], texts: int) -> dict[str, Any]:
    best = min(timings, key=lambda timing: timing.seconds)
    return {
        "threads": key[0],
        "batch_size": key[1],
        "seconds": round(best.seconds, 3),
        "rounds_seconds": [round(timing.seconds, 3) for timing in timings],
        "texts_per_s": round(texts / best.seconds, 2),
        "cpu_seconds": round(best.cpu_seconds, 3),
        "texts_per_cpu_s": round(texts / best.cpu_seconds, 2),
        "word_pieces_per_s": round(best.word_pieces / best.seconds, 1),
        "forward_passes": best.forward_passes,
    }


def environment() -> dict[str, Any]:
    torch = import_torch()
    return {
        "cpus_usable": available_cpus(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "machine": platform.machine(),
        "processor": cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
