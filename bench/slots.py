"""What each replication slot costs the server: one slot for two tables against a slot each.

Several streamers on one database each read their own slot, and the server decodes the whole
WAL of the database once per slot: pgoutput drops the changes of tables outside a slot's
publication only after decoding them. This measures that on the embedded PostgreSQL 18.

One database, tables `articles`, `faqs` and `other` (the application's tables no streamer
reads), a ~400-character text each row, and four pgoutput slots created before the workload:
`both` (a publication of articles and faqs: one streamer), `articles` and `faqs` (a publication
each: two streamers), and `none` (a publication of a table nobody writes: what a slot costs
for nothing). The workload inserts `--rows` rows into each of the three tables, then updates
each row once, in transactions of 500. Each slot's changes are then
read with `pg_logical_slot_peek_binary_changes` (the decoding a walsender does, without the
network; peeking leaves the slot where it was, so each is read `--rounds` times and the median
kept), in a backend of its own whose CPU time is read from `/proc/<pid>/stat`.

    python bench/slots.py [--quick] [--rows N] [--rounds R] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    embedded_server,
    environment,
    fresh_database,
    quiet_warnings,
    ratio,
    work_directory,
)

TEXT = "Logical replication decodes the write-ahead log once per slot. " * 6
SLOTS = {"both": "articles, faqs", "articles": "articles", "faqs": "faqs", "none": "untouched"}
WRITTEN = ("articles", "faqs", "other")
BATCH = 500
# Clock ticks per second, for /proc/<pid>/stat's utime and stime.
TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 rows a table, 3 rounds")
    parser.add_argument("--rows", type=int, help="rows inserted (then updated) per table")
    parser.add_argument("--rounds", type=int, help="reads of each slot; the median is kept")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 5)
    quiet_warnings()
    with work_directory(None) as workdir, embedded_server(workdir / "pg") as server:
        with fresh_database(server) as database:
            result = measure(server.dsn(database), rows, rounds)
        result["environment"] = environment(server)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


def measure(dsn: str, rows: int, rounds: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        prepare(conn)
        start = lsn(conn)
        write(conn, rows)
        wal_bytes = wal_since(conn, start)
    reads = {slot: [read_slot(dsn, slot) for _ in range(rounds)] for slot in SLOTS}
    slots = {slot: median_read(found) for slot, found in reads.items()}
    one, two = slots["both"]["cpu_seconds"], slots["articles"]["cpu_seconds"]
    two += slots["faqs"]["cpu_seconds"]
    return {
        "rows_per_table": rows,
        "changes": 2 * len(WRITTEN) * rows,
        "changes_published": 4 * rows,
        "wal_bytes": wal_bytes,
        "rounds": rounds,
        "slots": slots,
        "one_streamer_cpu_seconds": one,
        "two_streamers_cpu_seconds": round(two, 3),
        "ratio_two_streamers_to_one": ratio(two, one),
        "ratio_slot_with_nothing_published_to_one": ratio(slots["none"]["cpu_seconds"], one),
    }


def prepare(conn: psycopg.Connection[Any]) -> None:
    for table in (*WRITTEN, "untouched"):
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text, n int)")
    for slot, tables in SLOTS.items():
        conn.execute(f"CREATE PUBLICATION bench_{slot} FOR TABLE {tables}")
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"bench_{slot}",)
        )


def write(conn: psycopg.Connection[Any], rows: int) -> None:
    """Inserts, then updates, taking turns between the tables batch by batch."""
    for statement in (
        "INSERT INTO {t} (id, body, n) SELECT g, %s || g, 0 "
        "FROM generate_series(%s::bigint, %s::bigint) g",
        "UPDATE {t} SET body = %s || id, n = n + 1 WHERE id BETWEEN %s::bigint AND %s::bigint",
    ):
        for low in range(1, rows + 1, BATCH):
            high = min(low + BATCH - 1, rows)
            for table in WRITTEN:
                conn.execute(statement.format(t=table), (TEXT, low, high))


def lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wal_since(conn: psycopg.Connection[Any], start: str) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (start,)).fetchone()
    assert row is not None
    return int(row[0])


def read_slot(dsn: str, slot: str) -> dict[str, float]:
    """Decode everything the slot holds, in a fresh backend: its CPU and wall seconds, the
    messages and bytes the plugin sent."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.info.backend_pid
        cpu, started = backend_cpu(pid), time.perf_counter()
        row = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM "
            "pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
            "'publication_names', %s)",
            (f"bench_{slot}", f"bench_{slot}"),
        ).fetchone()
        wall = time.perf_counter() - started
        cpu = backend_cpu(pid) - cpu
    assert row is not None
    return {"cpu_seconds": cpu, "wall_seconds": wall, "messages": row[0], "bytes": row[1]}


def backend_cpu(pid: int) -> float:
    """User plus system CPU seconds of a server process (fields 14 and 15 of its stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def median_read(reads: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in reads), 3),
        "wall_seconds": round(statistics.median(r["wall_seconds"] for r in reads), 3),
        "messages": int(reads[0]["messages"]),
        "bytes": int(reads[0]["bytes"]),
    }


if __name__ == "__main__":
    main()
