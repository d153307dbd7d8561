"""Micro-benchmark of the pgoutput and wal2json decoders: messages per second on one core.

Decodes 200,000 Update and 200,000 Insert messages of a 5-column row (id, title, body,
author_id, updated_at, all in text format as pgoutput sends them) and prints one JSON object.
Payloads are fed as memoryview slices of a larger buffer, the way psycopg hands out CopyData,
and also as bytes. The same row as wal2json (format-version 2, with the options
`wal2json_options` asks for) is decoded the same way; `json.loads` of that payload alone is
the floor under it. Time is this process's CPU time (so other load on a shared machine does
not count against the decoder), and the best of several rounds is reported.

    python bench/decode.py [--count N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import time
from collections.abc import Callable

from cdc.replication.pgoutput import PgOutputDecoder
from cdc.replication.wal2json import Wal2JsonDecoder

ROW = (
    b"1234567",
    "Как устроен WAL — a short title".encode(),
    ("Logical replication streams row changes to subscribers. " * 4).encode(),
    b"42",
    b"2025-06-01 12:34:56.789012+00",
)


def tuple_data(values: tuple[bytes, ...]) -> bytes:
    """TupleData with every column in text format."""
    out = [struct.pack("!H", len(values))]
    for value in values:
        out.append(b"t" + struct.pack("!I", len(value)) + value)
    return b"".join(out)


def update_message(relation_id: int) -> bytes:
    return b"U" + struct.pack("!I", relation_id) + b"N" + tuple_data(ROW)


def insert_message(relation_id: int) -> bytes:
    return b"I" + struct.pack("!I", relation_id) + b"N" + tuple_data(ROW)


def wal2json_message(action: str) -> bytes:
    """ROW as wal2json 2.5 writes it: integers as JSON numbers, the rest as strings."""
    names = ("id", "title", "body", "author_id", "updated_at")
    types = (20, 25, 25, 23, 1184)
    columns = [
        {"name": name, "typeoid": oid, "value": int(value) if oid in (20, 23) else value.decode()}
        for name, oid, value in zip(names, types, ROW, strict=True)
    ]
    change = {
        "action": action,
        "xid": 745,
        "timestamp": "2025-06-01 12:34:56.789012+00",
        "lsn": "16/B374D848",
        "schema": "public",
        "table": "articles",
        "columns": columns,
        **({"identity": columns[:1]} if action == "U" else {}),
        "pk": [{"name": "id", "typeoid": 20}],
    }
    return json.dumps(change, ensure_ascii=False, separators=(",", ":")).encode()


def wal2json_decoder(insert: bytes) -> Callable[[bytes | memoryview], object]:
    """A wal2json decoder that has seen the table once (its Relation is behind it)."""
    decoder = Wal2JsonDecoder()
    decoder.decode(insert)
    return decoder.decode


def as_memoryview(message: bytes) -> memoryview:
    """The payload as psycopg delivers it: a view into the XLogData frame after its header."""
    frame = b"w" + bytes(24) + message
    return memoryview(frame)[25:]


def rate(
    payload: bytes | memoryview,
    count: int,
    rounds: int,
    decode: Callable[[bytes | memoryview], object] | None = None,
) -> float:
    """Best messages/s over `rounds` runs of `count` decodes (pgoutput's unless `decode`)."""
    decode = decode or PgOutputDecoder().decode
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            decode(payload)
        best = min(best, time.process_time() - started)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    update, insert = update_message(16384), insert_message(16384)
    result = {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "count": args.count,
        "rounds": args.rounds,
        "clock": "process_time, best round",
        "columns": len(ROW),
        "update_bytes": len(update),
        "insert_bytes": len(insert),
        "update_msgs_per_s": round(rate(as_memoryview(update), args.count, args.rounds)),
        "insert_msgs_per_s": round(rate(as_memoryview(insert), args.count, args.rounds)),
        "update_msgs_per_s_bytes_input": round(rate(update, args.count, args.rounds)),
        "insert_msgs_per_s_bytes_input": round(rate(insert, args.count, args.rounds)),
    }
    w_update, w_insert = wal2json_message("U"), wal2json_message("I")
    decode = wal2json_decoder(w_insert)
    result |= {
        "wal2json_update_bytes": len(w_update),
        "wal2json_insert_bytes": len(w_insert),
        "wal2json_update_msgs_per_s": round(
            rate(as_memoryview(w_update), args.count, args.rounds, decode)
        ),
        "wal2json_insert_msgs_per_s": round(
            rate(as_memoryview(w_insert), args.count, args.rounds, decode)
        ),
        "wal2json_update_json_loads_only_per_s": round(
            rate(w_update, args.count, args.rounds, json.loads)
        ),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
