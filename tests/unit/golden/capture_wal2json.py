"""Capture golden wal2json and pgoutput payloads of the same SQL from PostgreSQL 15 (a test tool).

Rerunnable:

    cd <repository> && python -m tests.unit.golden.capture_wal2json [--out DIR] [--pg-bin DIR]

(`-m` from the repository root, so that `cdc` is this checkout's and `tests` a package.)

Starts a throwaway cluster of Debian's PostgreSQL 15 (`initdb` + `pg_ctl` as the `postgres`
system user when run as root, else as the current user; data directory in a temporary
directory; unix socket only, `listen_addresses = ''`) with `wal_level = logical` and the
session time zone Asia/Kolkata (so timestamps carry a +05:30 offset), creates the tables, a
publication `p` for the tables wal2json is told about, and two slots at the same point: `w2j`
(wal2json, read with `cdc.replication.wal2json.wal2json_options`) and `pgo` (pgoutput,
proto_version 3, messages on, no streaming). Then for each scenario it runs the SQL and reads
both streams exactly as `cdc.replication.stream` does: psycopg in replication mode,
START_REPLICATION, `pgconn.get_copy_data` polled on the socket.

Written to `wal2json/` beside this file:

- `<scenario>.jsonl`: the wal2json XLogData payloads, one per line, in order (keepalives left
  out); `<scenario>.pgoutput`: pgoutput's XLogData frames, each a 4-byte big-endian length and
  the whole `w` frame. Large scenarios are gzipped (`.gz`).
- `manifest.json`: server and plugin versions, both option lists, setup SQL, the configured
  tables with their primary keys from the catalog, and per scenario its SQL and the actions
  observed.

How reading stops: after its SQL each scenario emits a non-transactional logical message with
prefix `golden-end` and the scenario name as content; both plugins decode it at its WAL
position, so once it arrives everything before it has been decoded. It is the last payload of
every file. Reading waits on the socket under a deadline; there are no sleeps. The cluster is
stopped at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import getpass
import gzip
import json
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from cdc.replication.changes import MARK_PREFIX
from cdc.replication.wal2json import wal2json_options
from tests.unit.golden.capture import (
    MARKER_PREFIX,
    TOAST_BODY,
    Reader,
    Step,
    execute,
    is_marker,
    shown,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "wal2json"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TIME_ZONE = "Asia/Kolkata"
PGOUTPUT_OPTIONS = "proto_version '3', publication_names 'p', messages 'true'"
WAL2JSON_PREFIXES = (MARK_PREFIX, MARKER_PREFIX)
LARGE_ROWS = 3000
SECOND_BODY = TOAST_BODY[::-1]

# The tables wal2json is told about (add-tables) and the publication holds: name -> the
# (content columns, metadata columns) the parity test configures for it.
TABLES: dict[str, tuple[list[str], list[str]]] = {
    "public.articles": (["title", "body"], ["author_id"]),
    "public.translations": (["title"], []),
    "public.rekeyed": (["title", "body"], ["author_id"]),
    "public.toasty": (["title", "body"], ["author_id"]),
    "public.trunc_a": (["title"], []),
    "public.trunc_b": (["title"], []),
    "public.trunc_c": (["a_id"], []),
    "public.full_identity": (["title", "body"], ["author_id"]),
    "public.types": (["note", "doc", "tags"], ["flag", "raw", "amount", "big", "ratio", "at"]),
    "Mixed Case.a.b": (["Title"], []),
    "public.comma,star*back\\slash space": (["title"], []),
    "public.*": (["title"], []),
    "public.savepoints": (["title"], []),
    "public.evolving": (["title"], []),
    "public.preexisting": (["title", "body"], []),
    "public.toast_before": (["title", "body"], []),
    "public.bulk": (["title"], []),
}

SETUP: list[Step] = [
    "CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "CREATE TABLE translations (lang text, id int, title text, PRIMARY KEY (lang, id))",
    "CREATE TABLE rekeyed (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "CREATE TABLE toasty (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "ALTER TABLE toasty ALTER body SET STORAGE EXTERNAL",
    "CREATE TABLE trunc_a (id serial PRIMARY KEY, title text)",
    "CREATE TABLE trunc_b (id serial PRIMARY KEY, title text)",
    "CREATE TABLE trunc_c (id serial PRIMARY KEY, a_id int REFERENCES trunc_a)",
    "CREATE TABLE full_identity (id bigint PRIMARY KEY, title text, body text, author_id int)",
    "ALTER TABLE full_identity REPLICA IDENTITY FULL",
    "CREATE TABLE types (id int PRIMARY KEY, flag bool, raw bytea, amount numeric, big int8,"
    " ratio float8, doc jsonb, tags text[], nums int[], at timestamptz, note text)",
    'CREATE SCHEMA "Mixed Case"',
    'CREATE TABLE "Mixed Case"."a.b" ("Id" bigint PRIMARY KEY, "Title" text)',
    'CREATE TABLE "comma,star*back\\slash space" (id int PRIMARY KEY, title text)',
    'CREATE TABLE "*" (id int PRIMARY KEY, title text)',
    "CREATE TABLE not_added (id int PRIMARY KEY, title text)",
    "CREATE TABLE savepoints (id bigint PRIMARY KEY, title text)",
    "CREATE TABLE evolving (id bigint PRIMARY KEY, title text, extra int)",
    "CREATE TABLE preexisting (id bigint PRIMARY KEY, title text, body text)",
    "INSERT INTO preexisting VALUES (1, 'old one', 'body one'), (2, 'old two', 'body two')",
    "CREATE TABLE toast_before (id bigint PRIMARY KEY, title text, body text)",
    "ALTER TABLE toast_before ALTER body SET STORAGE EXTERNAL",
    ("INSERT INTO toast_before VALUES (1, 'Big before', %s)", (TOAST_BODY,)),
    "CREATE TABLE bulk (id int PRIMARY KEY, title text)",
]


@dataclass
class Scenario:
    """SQL to run, and the wal2json actions it must produce.

    `pattern` is a regular expression over the actions of the wal2json payloads, in order (the
    end marker left out); the capture fails if the server disagrees.
    """

    name: str
    description: str
    steps: list[Step]
    pattern: str
    notes: dict[str, Any] = field(default_factory=dict)
    compress: bool = False


SCENARIOS = [
    Scenario(
        "crud",
        "insert three rows (one with a NULL author_id, one with an empty body), update a"
        " title, delete a row",
        [
            "BEGIN",
            "INSERT INTO articles VALUES (1, 'First', 'Body one', 7)",
            "INSERT INTO articles VALUES (2, 'Second', 'Body two', NULL)",
            "INSERT INTO articles VALUES (3, 'Third', '', 9)",
            "COMMIT",
            "UPDATE articles SET title = 'First, edited' WHERE id = 1",
            "DELETE FROM articles WHERE id = 3",
        ],
        r"BIIIC BUC BDC",
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
        r"BIIC BUC BUC BDC",
    ),
    Scenario(
        "pk_change",
        "an update that changes the primary key: wal2json's identity holds the old key",
        [
            "INSERT INTO rekeyed VALUES (1, 'Keyed', 'Body', 5)",
            "UPDATE rekeyed SET id = 100, title = 'Rekeyed' WHERE id = 1",
        ],
        r"BIC BUC",
    ),
    Scenario(
        "toast",
        "a 12 kB body stored out of line (STORAGE EXTERNAL): updating only the title leaves"
        " body out of the UPDATE; updating body sends it; updating author_id leaves it out"
        " again",
        [
            ("INSERT INTO toasty VALUES (1, 'Big', %s, 1)", (TOAST_BODY,)),
            "UPDATE toasty SET title = 'Big, renamed' WHERE id = 1",
            ("UPDATE toasty SET body = %s WHERE id = 1", (SECOND_BODY,)),
            "UPDATE toasty SET author_id = 2 WHERE id = 1",
            "DELETE FROM toasty WHERE id = 1",
        ],
        r"BIC BUC BUC BUC BDC",
        {"body": "TOAST_BODY of capture.py, then reversed"},
    ),
    Scenario(
        "truncate",
        "TRUNCATE of a table no change of which was seen yet, then TRUNCATE of two tables"
        " with RESTART IDENTITY CASCADE (trunc_c references trunc_a), then a CASCADE one",
        [
            "TRUNCATE trunc_b",
            "INSERT INTO trunc_a (title) VALUES ('a')",
            "INSERT INTO trunc_b (title) VALUES ('b')",
            "INSERT INTO trunc_c (a_id) SELECT id FROM trunc_a",
            "TRUNCATE trunc_a, trunc_b RESTART IDENTITY CASCADE",
            "TRUNCATE trunc_a CASCADE",
        ],
        r"BTC BIC BIC BIC BTTTC BTTC",
        {"per_table": "wal2json sends one T per table, without the CASCADE/RESTART flags"},
    ),
    Scenario(
        "replica_identity_full",
        "REPLICA IDENTITY FULL: wal2json's identity is the whole old row",
        [
            "INSERT INTO full_identity VALUES (1, 'Full', 'Body', NULL)",
            "UPDATE full_identity SET title = 'Full, edited' WHERE id = 1",
            "DELETE FROM full_identity WHERE id = 1",
        ],
        r"BIC BUC BDC",
    ),
    Scenario(
        "types",
        "bool, bytea, numeric (1.50, NaN), int8, float8 (1e+300, Infinity), jsonb, arrays,"
        " timestamptz, NULLs, unicode, text with quotes, backslashes and newlines",
        [
            "BEGIN",
            "INSERT INTO types VALUES (1, true, '\\x00ff10', 1.50, 9223372036854775807,"
            ' 1e300, \'{"b": [1, 2.50], "a": "x\\"y"}\', ARRAY[\'a b\', \'c,d\', \'"q"\'],'
            " '{1,2,3}', '2026-06-01 12:00:00.5+00',"
            " E'it''s \"quoted\", back\\\\slash,\\nnew line\\ttab')",
            "INSERT INTO types VALUES (2, false, '\\x', 'NaN', -1, 'Infinity', 'null', '{}',"
            " '{NULL,1}', '-infinity', 'سلام 🚀 ñ 你好')",
            "INSERT INTO types (id) VALUES (3)",
            "COMMIT",
            "UPDATE types SET amount = -0.000100, flag = false, raw = NULL, ratio = 0.1"
            " WHERE id = 1",
        ],
        r"BIIIC BUC",
        {"nan": "wal2json 2.5 sends NaN and Infinity as null (pgoutput: 'NaN', 'Infinity')"},
    ),
    Scenario(
        "odd_names",
        'tables whose names need escaping in add-tables: "Mixed Case"."a.b",'
        ' public."comma,star*back\\slash space", public."*" (not a wildcard); not_added is'
        " written in the same transaction and must not appear",
        [
            "BEGIN",
            """INSERT INTO "Mixed Case"."a.b" VALUES (1, 'mixed')""",
            """INSERT INTO "comma,star*back\\slash space" VALUES (2, 'comma')""",
            """INSERT INTO "*" VALUES (3, 'star')""",
            "INSERT INTO not_added VALUES (4, 'not added')",
            "COMMIT",
            """UPDATE "Mixed Case"."a.b" SET "Title" = 'MIXED' WHERE "Id" = 1""",
        ],
        r"BIIIC BUC",
    ),
    Scenario(
        "not_added",
        "insert, update, delete and truncate of a table not in add-tables: wal2json sends an"
        " empty Begin/Commit for each transaction, pgoutput (15) nothing",
        [
            "INSERT INTO not_added VALUES (10, 'a')",
            "UPDATE not_added SET title = 'b' WHERE id = 10",
            "DELETE FROM not_added WHERE id = 10",
            "TRUNCATE not_added",
        ],
        r"BC BC BC BC",
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
        "savepoint",
        "a savepoint rolled back inside a committed transaction: its insert just vanishes",
        [
            "BEGIN",
            "INSERT INTO savepoints VALUES (10, 'kept before')",
            "SAVEPOINT sp",
            "INSERT INTO savepoints VALUES (11, 'rolled back')",
            "ROLLBACK TO SAVEPOINT sp",
            "INSERT INTO savepoints VALUES (12, 'kept after')",
            "COMMIT",
        ],
        r"BIIC",
    ),
    Scenario(
        "messages",
        f"logical messages: {MARK_PREFIX!r} transactional and not, one in a transaction with"
        " a change, and 'other.prefix' (not in add-msg-prefixes) transactional and not",
        [
            f"SELECT pg_logical_emit_message(true, '{MARK_PREFIX}', 's1:0:low')",
            f"SELECT pg_logical_emit_message(false, '{MARK_PREFIX}', 's1:0:high')",
            "SELECT pg_logical_emit_message(true, 'other.prefix', 'ignored')",
            "SELECT pg_logical_emit_message(false, 'other.prefix', 'ignored')",
            "BEGIN",
            "INSERT INTO articles VALUES (20, 'Marked', 'with a mark', 1)",
            f"SELECT pg_logical_emit_message(true, '{MARK_PREFIX}', 's1:1:low')",
            "COMMIT",
        ],
        r"BMC M BC BIMC",
    ),
    Scenario(
        "alter_table",
        "ALTER TABLE ADD COLUMN and DROP COLUMN between changes",
        [
            "INSERT INTO evolving VALUES (1, 'one', 1)",
            "ALTER TABLE evolving ADD COLUMN note text",
            "UPDATE evolving SET title = 'one, edited' WHERE id = 1",
            "INSERT INTO evolving VALUES (2, 'two', 2, 'a note')",
            "ALTER TABLE evolving DROP COLUMN extra",
            "UPDATE evolving SET title = 'one, edited again' WHERE id = 1",
            "INSERT INTO evolving VALUES (3, 'three', 'another note')",
            "DELETE FROM evolving WHERE id = 2",
        ],
        r"BIC BC BUC BIC BC BUC BIC BDC",
        {"ddl": "wal2json sends an empty Begin/Commit for each ALTER TABLE"},
    ),
    Scenario(
        "preexisting",
        "rows written before the slots existed: the first change seen of the table is a"
        " DELETE (key only), then an UPDATE",
        [
            "DELETE FROM preexisting WHERE id = 1",
            "UPDATE preexisting SET title = 'old two, edited' WHERE id = 2",
        ],
        r"BDC BUC",
    ),
    Scenario(
        "toast_before",
        "a row with a TOASTed body written before the slots existed: the first change seen of"
        " the table is an UPDATE of its title, which leaves body out",
        ["UPDATE toast_before SET title = 'Big before, renamed' WHERE id = 1"],
        r"BUC",
    ),
    Scenario(
        "large",
        f"one transaction inserting {LARGE_ROWS} rows",
        [
            "BEGIN",
            f"INSERT INTO bulk SELECT g, 'row ' || g FROM generate_series(1, {LARGE_ROWS}) g",
            "COMMIT",
        ],
        rf"BI{{{LARGE_ROWS}}}C",
        compress=True,
    ),
]


# --- server ------------------------------------------------------------------------------


class Cluster:
    """A throwaway PostgreSQL cluster run by a non-root user, on a unix socket only."""

    def __init__(self, pg_bin: Path, root: Path) -> None:
        self.pg_bin = pg_bin
        self.root = root
        self.data = root / "data"
        self.port = 5432  # names the socket file in `root`; nothing listens on TCP
        if os.geteuid() == 0:
            self.user = "postgres"
            self.prefix = ["runuser", "-u", self.user, "--"]
            entry = pwd.getpwnam(self.user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        else:
            self.user = getpass.getuser()
            self.prefix = []

    @property
    def dsn(self) -> str:
        return f"host={self.root} port={self.port} user={self.user} dbname=postgres"

    def run(self, program: str, *args: str) -> None:
        command = [*self.prefix, str(self.pg_bin / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stderr or result.stdout}")

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-E", "UTF8", "--locale=C", "-N")
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.root}'",
            "port": str(self.port),
            "wal_level": "logical",
            "max_replication_slots": "10",
            "max_wal_senders": "10",
            "timezone": f"'{TIME_ZONE}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self) -> None:
        """Stop the server if it runs: pg_ctl, else its postmaster by the pid it wrote."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        except RuntimeError:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
            raise


@contextmanager
def cluster(pg_bin: Path) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="golden-pg15-"))
    server = Cluster(pg_bin, root)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def output_plugin_libraries(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Newer minor releases gate output plugins with `output_plugin_libraries`: if this
    server has the setting, add wal2json to it; report what was found."""
    row = conn.execute(
        "SELECT setting, boot_val FROM pg_settings WHERE name = 'output_plugin_libraries'"
    ).fetchone()
    if row is None:
        return {"exists": False}
    setting, default = row
    if "wal2json" not in re.split(r"[\s,]+", setting):
        conn.execute(f"ALTER SYSTEM SET output_plugin_libraries = '{setting}, wal2json'")
        conn.execute("SELECT pg_reload_conf()")
    return {"exists": True, "default": default, "was": setting}


def wal2json_version() -> str | None:
    """The Debian package's version (the plugin itself cannot be asked)."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "postgresql-15-wal2json"],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    return result.stdout.strip() or None


def primary_keys(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Primary-key columns of each configured table, from the catalog, in key order."""
    keys = {}
    for table in TABLES:
        schema, _, name = table.partition(".")
        rows = conn.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
            " WHERE i.indisprimary AND n.nspname = %s AND c.relname = %s ORDER BY k.ord",
            (schema, name),
        ).fetchall()
        keys[table] = [row[0] for row in rows]
    return keys


def quoted(table: str) -> str:
    schema, _, name = table.partition(".")
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


# --- replication -------------------------------------------------------------------------


def payloads(frames: list[bytes]) -> list[bytes]:
    return [frame[25:] for frame in frames if frame[:1] == b"w"]


def is_wal2json_marker(frame: bytes, scenario: str) -> bool:
    """The end marker, recognised with `json` alone so capture does not trust the decoder."""
    if frame[:1] != b"w":
        return False
    obj = json.loads(frame[25:])
    return bool(
        obj.get("action") == "M"
        and obj.get("prefix") == MARKER_PREFIX
        and obj.get("content") == scenario
        and obj.get("transactional") is False
    )


def actions(lines: list[bytes]) -> str:
    """The actions of wal2json payloads, marker dropped: what `pattern` is matched against."""
    return "".join(json.loads(line)["action"] for line in lines)[:-1]


def shortened(observed: str) -> str:
    return re.sub(r"(.)\1{2,}", lambda run: f"{run[1]}{{{len(run[0])}}}", observed)


def write_file(path: Path, data: bytes, compress: bool) -> str:
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path.name


def save(out: Path, scenario: Scenario, w2j: list[bytes], pgo: list[bytes]) -> dict[str, Any]:
    lines = payloads(w2j)
    assert all(b"\n" not in line for line in lines), "a wal2json payload holds a newline"
    frames = [frame for frame in pgo if frame[:1] == b"w"]
    jsonl = b"".join(line + b"\n" for line in lines)
    framed = b"".join(struct.pack("!I", len(frame)) + frame for frame in frames)
    return {
        "wal2json_file": write_file(out / f"{scenario.name}.jsonl", jsonl, scenario.compress),
        "pgoutput_file": write_file(out / f"{scenario.name}.pgoutput", framed, scenario.compress),
        "wal2json_payloads": len(lines),
        "pgoutput_frames": len(frames),
        "wal2json_actions": shortened(actions(lines)),
        "pgoutput_types": shortened("".join(chr(frame[25]) for frame in frames)[:-1]),
    }


def run_scenario(
    sql: psycopg.Connection[Any], scenario: Scenario, w2j: Reader, pgo: Reader
) -> None:
    for step in scenario.steps:
        execute(sql, step)
    sql.execute("SELECT pg_logical_emit_message(false, %s, %s)", (MARKER_PREFIX, scenario.name))
    w2j.read_until(lambda frame: is_wal2json_marker(frame, scenario.name), "end marker")
    pgo.read_until(lambda frame: is_marker(frame, scenario.name), "end marker")


def capture_from(dsn: str, out: Path) -> None:
    problems: list[str] = []
    options = wal2json_options(list(TABLES), WAL2JSON_PREFIXES)
    with psycopg.connect(dsn, autocommit=True) as sql:
        row = sql.execute("SHOW server_version").fetchone()
        manifest: dict[str, Any] = {
            "server_version": row[0] if row else None,
            "wal2json_package": wal2json_version(),
            "output_plugin_libraries": output_plugin_libraries(sql),
            "time_zone": TIME_ZONE,
            "wal2json_options": list(options),
            "pgoutput_options": PGOUTPUT_OPTIONS,
            "format": {
                "jsonl": "one wal2json XLogData payload per line, in order; the last is the"
                " end marker",
                "pgoutput": "repeated: 4-byte big-endian length, then one XLogData (w) frame;"
                " the last is the end marker",
            },
            "end_marker": {"prefix": MARKER_PREFIX, "content": "<scenario>"},
            "setup_sql": [shown(step) for step in SETUP],
        }
        for step in SETUP:
            execute(sql, step)
        sql.execute(f"CREATE PUBLICATION p FOR TABLE {', '.join(map(quoted, TABLES))}")
        keys = primary_keys(sql)
        manifest["tables"] = {
            table: {"columns": columns, "metadata": metadata, "primary_key": keys[table]}
            for table, (columns, metadata) in TABLES.items()
        }
        # Both slots at the same point: everything after this is in both streams.
        sql.execute("SELECT pg_create_logical_replication_slot('w2j', 'wal2json')")
        sql.execute("SELECT pg_create_logical_replication_slot('pgo', 'pgoutput')")
        w2j = Reader(dsn, "w2j", ", ".join(options))
        pgo = Reader(dsn, "pgo", PGOUTPUT_OPTIONS)
        try:
            manifest["scenarios"] = {}
            for scenario in SCENARIOS:
                run_scenario(sql, scenario, w2j, pgo)
                saved = save(out, scenario, w2j.take(), pgo.take())
                observed = saved["wal2json_actions"]
                full = re.sub(r"(.)\{(\d+)\}", lambda m: m[1] * int(m[2]), observed)
                if not re.fullmatch(scenario.pattern.replace(" ", ""), full):
                    problems.append(f"{scenario.name}: {observed!r} does not match pattern")
                manifest["scenarios"][scenario.name] = {
                    "description": scenario.description,
                    "sql": [shown(step) for step in scenario.steps],
                    "pattern": scenario.pattern,
                    **saved,
                    "notes": scenario.notes,
                }
        finally:
            w2j.close()
            pgo.close()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    if problems:
        raise AssertionError("the stream differs from the scenarios:\n" + "\n".join(problems))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=OUT, help="where to write (default: %(default)s)"
    )
    parser.add_argument("--pg-bin", type=Path, default=PG_BIN, help="PostgreSQL 15 binaries")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with cluster(args.pg_bin) as server:
        capture_from(server.dsn, args.out)
    total = sum(path.stat().st_size for path in args.out.iterdir())
    print(f"wrote {args.out} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
