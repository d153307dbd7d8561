"""Micro-benchmark of the reader's hot path: decode -> assemble -> coalesce, changes per second.

What `cdc run` does for each XLogData frame of bench/throughput.py's part d (non-content
updates), without the server or the sink: pgoutput Begin, 1,000 Updates of an
`articles(id, title, body, author_id, views)` row (a ~550-character body, only `views`
changed), Commit; each payload a memoryview slice of its frame, as psycopg hands it out. The
messages go through `PgOutputDecoder.decode`, `TransactionAssembler.feed` and
`ChangeBuffer.add`, which is drained whenever it is full (10,000 rows, its default), as the
flusher would. Rows repeat every 5,000 ids, so the buffer coalesces as it does in part d.

Time is this process's CPU time, best of several rounds. `compiled` lists the modules of the
hot path that run as mypyc extensions (`cdc.hotpath`): run it once as built and once with
`WAL2VEC_PURE_PYTHON`-built sources (see bench/README.md) to compare.

    python bench/hotpath.py [--transactions N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import time

from cdc.config import TableConfig
from cdc.hotpath import compiled_modules
from cdc.pipeline.buffer import ChangeBuffer
from cdc.replication.pgoutput import PgOutputDecoder
from cdc.replication.transactions import TransactionAssembler

RELATION_ID = 16384
ROWS_PER_TRANSACTION = 1000
DISTINCT_ROWS = 5000
TITLE = "Как устроен WAL — a short title".encode()
BODY = ("Logical replication streams row changes to subscribers. " * 10).encode()
COLUMNS = (("id", 20), ("title", 25), ("body", 25), ("author_id", 23), ("views", 23))


def frame(message: bytes) -> memoryview:
    """The payload as psycopg delivers it: a view into the XLogData frame after its header."""
    return memoryview(b"w" + bytes(24) + message)[25:]


def relation() -> bytes:
    body = struct.pack("!I", RELATION_ID) + b"public\0articles\0" + b"d"
    body += struct.pack("!H", len(COLUMNS))
    for index, (name, oid) in enumerate(COLUMNS):
        flags = bytes([1 if index == 0 else 0])  # the first column is the key
        body += flags + name.encode() + b"\0" + struct.pack("!Ii", oid, -1)
    return b"R" + body


def update(row_id: int, views: int) -> bytes:
    values = (str(row_id).encode(), TITLE, BODY, b"42", str(views).encode())
    out = [b"U", struct.pack("!I", RELATION_ID), b"N", struct.pack("!H", len(values))]
    for value in values:
        out.append(b"t" + struct.pack("!I", len(value)) + value)
    return b"".join(out)


def stream(transactions: int) -> list[memoryview]:
    """Relation, then `transactions` transactions of ROWS_PER_TRANSACTION updates each."""
    frames = [frame(relation())]
    lsn = 1 << 32
    for number in range(transactions):
        lsn += 100_000
        frames.append(frame(b"B" + struct.pack("!QqI", lsn, 0, 1000 + number)))
        for index in range(ROWS_PER_TRANSACTION):
            row_id = (number * ROWS_PER_TRANSACTION + index) % DISTINCT_ROWS + 1
            frames.append(frame(update(row_id, number)))
        frames.append(frame(b"C" + struct.pack("!BQQq", 0, lsn, lsn + 50, 0)))
    return frames


def run_once(frames: list[memoryview]) -> tuple[float, int]:
    """CPU seconds to push `frames` through decode -> assemble -> buffer; rows drained."""
    table = TableConfig(table="public.articles", columns=["title", "body"], metadata=["author_id"])
    decode = PgOutputDecoder().decode
    feed = TransactionAssembler({"public.articles": table}).feed
    buffer = ChangeBuffer(max_rows=10_000, max_bytes=64 * 1024 * 1024)
    drained = 0
    started = time.process_time()
    for payload in frames:
        transaction = feed(decode(payload))
        if transaction is not None:
            buffer.add(transaction, 0.0)
            if buffer.full:
                drained += len(buffer.drain().rows)
    drained += len(buffer.drain().rows)
    return time.process_time() - started, drained


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--transactions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    frames = stream(args.transactions)
    changes = args.transactions * ROWS_PER_TRANSACTION
    best, drained = min(run_once(frames) for _ in range(args.rounds))
    print(
        json.dumps(
            {
                "python": platform.python_version(),
                "compiled": compiled_modules(),
                "changes": changes,
                "rows_drained": drained,
                "rounds": args.rounds,
                "clock": "process_time, best round",
                "changes_per_s": round(changes / best),
                "us_per_change": round(best / changes * 1e6, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
