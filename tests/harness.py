"""Driving `cdc` as a user would (a subprocess) and checking the sink against the source.

`assert_in_step` is the one checker every integration test ends with: each live source row with
content has exactly the vectors of its current content (checked against the vector the fake
endpoint gives for that text), and nothing else is in the sink.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import yaml
from psycopg import sql

from cdc.config import load_config
from cdc.content import ContentRule, content_hash, make_chunks
from cdc.embedding.factory import chunk_rules
from cdc.ids import render_source_id
from tests.fakes.openai_server import embed_vector

DIMENSIONS = 32
MODEL = "text-embedding-3-small"
REPO = Path(__file__).resolve().parent.parent
# How long a wait may take before the test fails. Generous: CI runs on two shared, loaded cores,
# and a deadline only bounds how long a failure takes to report, never how fast success is.
DEADLINE = 120.0
# How long a process gets after SIGTERM before a test's teardown sends SIGKILL.
STOP_GRACE = 30.0


def wait_until(
    condition: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition"
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # polling interval of a deadline wait, not a synchronisation
        delay = min(delay * 2, 0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str) -> int | None:
    """The status an HTTP GET of `url` answers with; None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def scrape(port: int, name: str, labels: str = "") -> float | None:
    """The value of one sample on a running `cdc run`'s /metrics, or None."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return None
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in body.decode().splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return None


@dataclass
class Table:
    table: str
    columns: list[str]  # empty when `template` gives the content
    metadata: list[str] = field(default_factory=list)
    target: str | None = None
    template: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # further per-table keys

    @property
    def content_rule(self) -> ContentRule:
        if self.template is not None:
            return ContentRule.from_template(self.template)
        return ContentRule.joined(self.columns)

    def as_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"table": self.table, **self.options}
        if self.template is not None:
            entry["template"] = self.template
        else:
            entry["columns"] = self.columns
        if self.metadata:
            entry["metadata"] = self.metadata
        if self.target:
            entry["target"] = self.target
        return entry


@dataclass
class Deployment:
    """One wal2vec deployment under test: its database, slot, config file and endpoint.

    `dsn` is the source (the content tables, the slot, the WAL); `sink_dsn` the database that
    holds the vectors and wal2vec's state tables, None when it is the source's (`sink.dsn`
    unset). Read each side through its own connection: `connect()` and `connect_sink()`.
    """

    dsn: str
    slot: str
    base_url: str
    workdir: Path
    tables: list[Table]
    sink_dsn: str | None = None
    plugin: str = "pgoutput"  # source.plugin
    extra: dict[str, Any] = field(default_factory=dict)
    processes: list[CdcProcess] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.workdir / "wal2vec.yaml"

    def write_config(self) -> Path:
        config: dict[str, Any] = {
            "source": {"dsn": self.dsn, "slot": self.slot, "publication": self.slot},
            "embedding": {
                "model": MODEL,
                "dimensions": DIMENSIONS,
                "base_url": self.base_url,
                "api_key": "sk-test-secret-key-do-not-print",
                "max_attempts": 4,
            },
            "tables": [t.as_config() for t in self.tables],
            "metrics": {"host": "127.0.0.1", "port": 0},
            "buffer": {"max_age": 0.05},
        }
        if self.plugin != "pgoutput":
            config["source"]["plugin"] = self.plugin
        if self.sink_dsn is not None and self.sink_dsn != self.dsn:
            config["sink"] = {"dsn": self.sink_dsn}
        for section, values in self.extra.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:  # a top-level setting, e.g. shutdown_timeout
                config[section] = values
        self.config_path.write_text(yaml.safe_dump(config))
        return self.config_path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDC_", "OPENAI_"))}
        env["PYTHONPATH"] = str(REPO)
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        self.write_config()
        return subprocess.run(
            [sys.executable, "-m", "cdc", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )

    def start(self, *extra_args: str) -> CdcProcess:
        self.write_config()
        log = self.workdir / f"cdc-run-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "cdc", "run", "--config", str(self.config_path)]
        with log.open("w") as handle:  # the child has its own copy of the descriptor
            process = subprocess.Popen(
                [*command, *extra_args],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )
        started = CdcProcess(process, log)
        self.processes.append(started)
        return started

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        """End every `cdc run` this deployment started, whatever state the test left it in."""
        for process in self.processes:
            process.terminate(grace)

    def connect(self) -> psycopg.Connection[Any]:
        """The source: content tables, the slot, the server's WAL position."""
        return psycopg.connect(self.dsn, autocommit=True)

    def execute(self, query: str, params: Any = None) -> None:
        """On the source."""
        with self.connect() as conn:
            conn.execute(query, params)

    @property
    def sink_conninfo(self) -> str:
        """The sink's DSN: `sink_dsn`, or the source's."""
        return self.sink_dsn or self.dsn

    def connect_sink(self) -> psycopg.Connection[Any]:
        """The sink: the vectors and cdc_state, cdc_dead_letters, cdc_snapshots."""
        return psycopg.connect(self.sink_conninfo, autocommit=True)

    def execute_sink(self, query: str, params: Any = None) -> None:
        with self.connect_sink() as conn:
            conn.execute(query, params)

    def current_lsn(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            return str(row[0])

    def checkpoint_reached(self, lsn: str) -> bool:
        """Whether the slot's confirmed flush LSN is at or past `lsn`.

        wal2vec confirms a position only after the sink committed everything before it.
        """
        if not self.snapshot_done():
            return False  # a new slot starts past `lsn` while its snapshot is still written
        return self.confirmed_past(lsn)

    def confirmed_past(self, lsn: str) -> bool:
        """Whether the slot's confirmed flush LSN is at or past `lsn`."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (lsn, self.slot),
            ).fetchone()
            return bool(row and row[0])

    def push_wal_past_the_slot(self) -> bool:
        """Write and switch WAL once more, then checkpoint; whether the slot is now lost (past
        `max_slot_wal_keep_size`). Call it in a `wait_until`."""
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO articles (id, title) "
                "SELECT coalesce(max(id), 0) + 1, 'wal' FROM articles"
            )
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            row = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot,),
            ).fetchone()
        return row is not None and row[0] == "lost"

    def snapshot_done(self) -> bool:
        with self.connect_sink() as conn:
            try:
                row = conn.execute(
                    "SELECT snapshot_done FROM cdc_state WHERE slot = %s", (self.slot,)
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                return False  # `cdc run` has not created its tables yet
            return bool(row and row[0])

    def wait_ready(self, timeout: float = DEADLINE) -> None:
        """Wait until `cdc run` finished its snapshot and streams."""
        wait_until(lambda: self._alive() and self.snapshot_done(), timeout, "snapshot done")

    def wait_caught_up(self, timeout: float = DEADLINE) -> None:
        """Wait until every change committed so far is in the sink.

        A no-op transaction after the workload moves the server's position; the confirmed
        position passes it once the streamer applied everything before.
        """
        self.execute("SELECT pg_logical_emit_message(true, 'wal2vec-test', 'sync')")
        target = self.current_lsn()
        wait_until(
            lambda: self._alive() and self.checkpoint_reached(target),
            timeout,
            f"checkpoint >= {target}",
        )

    def _alive(self) -> bool:
        """True while the latest `cdc run` runs; raises with its log if it exited."""
        if self.processes:
            self.processes[-1].assert_running()
        return True

    def sink_rows(self, sink_table: str = "cdc_embeddings") -> list[dict[str, Any]]:
        """The sink's rows in key order; none while `cdc run` has not created the table."""
        with self.connect_sink() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            if conn.execute("SELECT to_regclass(%s)", (sink_table,)).fetchone() == (None,):
                return []
            cur.execute(
                f"SELECT source_table, source_id, chunk, content, content_hash, model, "
                f"embedding::text AS embedding, metadata, lsn::text AS lsn FROM {sink_table} "
                "ORDER BY 1, 2, 3"
            )
            return list(cur.fetchall())

    def dead_letters(self) -> list[dict[str, Any]]:
        with self.connect_sink() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute("SELECT * FROM cdc_dead_letters ORDER BY source_table, source_id")
            return list(cur.fetchall())


@dataclass
class CdcProcess:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(DEADLINE)

    def terminate(self, grace: float = STOP_GRACE) -> int:
        """Teardown: SIGTERM, `grace` seconds to exit, then SIGKILL; always reaped."""
        return stop_process(self.process, grace)

    def assert_running(self) -> None:
        code = self.process.poll()
        assert code is None, f"cdc run exited with {code}:\n{self.output}"


class Workload(threading.Thread):
    """A writer beside `cdc run`: small transactions on `articles` until halted.

    The mix a content table sees: inserts (some upserts), edits of the embedded columns, edits
    of other columns only (they must cost no API call and change nothing in the sink), deletes,
    and transactions of several of these at once, over a few hundred ids so rows are inserted,
    edited and deleted again. Seeded, so a failure can be replayed (the seed is in `repr`).

    Writes on through a database restart: a lost connection is opened again (counted in
    `reconnects`). Any other error stops it and is kept in `error` for the test to raise.
    """

    def __init__(self, deployment: Deployment, seed: int | None = None, ids: int = 300) -> None:
        super().__init__(name="workload", daemon=True)
        self.deployment = deployment
        self.seed = random.randrange(2**32) if seed is None else seed
        self.ids = ids
        self.halt = threading.Event()
        self.transactions = 0
        self.reconnects = 0
        self.error: BaseException | None = None
        self._random = random.Random(self.seed)

    def __repr__(self) -> str:
        return f"Workload(seed={self.seed}, transactions={self.transactions})"

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                try:
                    with psycopg.connect(self.deployment.dsn) as conn:
                        while not self.halt.is_set():
                            with conn.transaction():
                                for _ in range(self._random.choice((1, 1, 1, 2, 4))):
                                    self._write(conn)
                            self.transactions += 1
                except psycopg.OperationalError:
                    # The server went away (a restart): connect again once it is back.
                    self.reconnects += 1
                    self.halt.wait(0.1)  # polling interval while the server restarts
        except BaseException as error:  # handed to the test thread by stop()
            self.error = error

    def _write(self, conn: psycopg.Connection[Any]) -> None:
        rng = self._random
        key = rng.randrange(self.ids)
        kind = rng.random()
        if kind < 0.35:
            conn.execute(
                "INSERT INTO articles (id, title, body, author_id) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                (key, f"title {key}", f"body {rng.randrange(10**6)} of {key}", key % 7),
            )
        elif kind < 0.6:
            conn.execute(
                "UPDATE articles SET title = %s WHERE id = %s",
                (f"title {key} edited {rng.randrange(10**6)}", key),
            )
        elif kind < 0.8:
            conn.execute(
                "UPDATE articles SET views = views + 1, author_id = %s WHERE id = %s",
                (rng.randrange(7), key),
            )
        elif kind < 0.9:
            conn.execute("UPDATE articles SET body = NULL, title = NULL WHERE id = %s", (key,))
        else:
            conn.execute("DELETE FROM articles WHERE id = %s", (key,))

    def stop(self) -> None:
        """Halt, join, and raise what went wrong in the writer, if anything."""
        self.halt.set()
        self.join(DEADLINE)
        assert not self.is_alive(), f"{self!r} did not stop"
        if self.error is not None:
            raise AssertionError(f"{self!r} failed") from self.error


def stop_process(process: subprocess.Popen[Any], grace: float = STOP_GRACE) -> int:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL and wait: no process outlives its test.

    Returns the exit code (negative for a signal)."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def expected_vectors(deployment: Deployment) -> dict[tuple[str, str, int], str]:
    """What the sink must hold: (table, id, chunk) -> content, computed from the source with
    the deployment's own chunking rules."""
    rules = chunk_rules(load_config(deployment.write_config(), environ={}))
    expected: dict[tuple[str, str, int], str] = {}
    dead = {(d["source_table"], d["source_id"]) for d in deployment.dead_letters()}
    with deployment.connect() as conn:
        for table in deployment.tables:
            schema, name = table.table.split(".", 1)
            keys = _key_columns(conn, schema, name)
            rule = table.content_rule
            columns = ", ".join(f'"{c}"::text' for c in [*keys, *rule.columns])
            rows = conn.execute(f'SELECT {columns} FROM "{schema}"."{name}"').fetchall()
            for row in rows:
                source_id = render_source_id([str(v) for v in row[: len(keys)]])
                content = rule.render(row[len(keys) :])
                if (table.table, source_id) in dead:
                    continue
                for chunk in make_chunks(content, rules[table.table]):
                    expected[(table.table, source_id, chunk.number)] = chunk.text
    return expected


def _key_columns(conn: psycopg.Connection[Any], schema: str, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, pos) ON true "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.pos",
        (schema, name),
    ).fetchall()
    return [str(r[0]) for r in rows]


def assert_in_step(
    deployment: Deployment, sink_table: str = "cdc_embeddings", *, own_rows_only: bool = False
) -> int:
    """The sink holds exactly the vectors of the source's current content. Returns the count.

    `own_rows_only`: the sink table is shared with other deployments (their own slots and
    tables), so only the rows of this deployment's tables are compared."""
    expected = expected_vectors(deployment)
    own = {table.table for table in deployment.tables}
    actual = {
        (r["source_table"], r["source_id"], r["chunk"]): r
        for r in deployment.sink_rows(sink_table)
        if not own_rows_only or r["source_table"] in own
    }
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing, f"vectors missing for {missing[:10]} ({len(missing)} in all)"
    assert not extra, f"vectors that should not be there: {extra[:10]} ({len(extra)} in all)"
    for key, content in expected.items():
        row = actual[key]
        assert row["content"] == content, f"{key}: stale content {row['content'][:60]!r}"
        assert row["content_hash"] == content_hash(content), f"{key}: wrong hash"
        assert row["model"] == MODEL
        stored = np.array(json.loads(row["embedding"]), dtype=np.float32)
        wanted = embed_vector(content, DIMENSIONS)
        assert np.allclose(stored, wanted, atol=1e-5), f"{key}: the vector is not its content's"
    return len(expected)


def ends_in_step(deployment: Deployment, process: CdcProcess) -> None:
    """Caught up, in step, nothing dead-lettered, and a clean stop."""
    deployment.wait_caught_up()
    assert assert_in_step(deployment) > 0
    assert deployment.dead_letters() == []
    assert process.stop() == 0, process.output


_SEED_COLUMNS = "source_table, source_id, chunk, content, content_hash, model, embedding"
_SEED_ROWS = (
    "SELECT 'public.articles', id::text, 0, c, encode(sha256(convert_to(c, 'UTF8')), 'hex'), "
    "{model}, {vector} FROM (SELECT id, title || E'\\n\\n' || body AS c FROM articles) a"
)


def seed_vectors(deployment: Deployment, *, placeholder_index: bool = False) -> None:
    """The vector of every `articles` row (content `title`, blank line, `body`; one chunk),
    written with SQL as `cdc run` would have: a snapshot then only compares hashes. No HNSW
    index, as after a bulk load; with `placeholder_index`, a btree under its name keeps
    `cdc run` from building one (over millions of rows that would take longer than a bench).

    One INSERT ... SELECT when the sink is the source's database; else the rows are computed
    on the source and copied over (COPY out, COPY in, streamed)."""
    result = deployment.cli("setup")
    assert result.returncode == 0, result.stderr
    vector = sql.Literal("[" + ",".join(["0.1"] * DIMENSIONS) + "]")
    with deployment.connect_sink() as conn:
        conn.execute("DROP INDEX IF EXISTS cdc_embeddings_embedding_idx")
        if deployment.sink_conninfo == deployment.dsn:
            rows = sql.SQL(_SEED_ROWS).format(
                model=sql.Literal(MODEL), vector=sql.SQL("{}::vector").format(vector)
            )
            conn.execute(sql.SQL(f"INSERT INTO cdc_embeddings ({_SEED_COLUMNS}) ") + rows)
        else:  # the vector as text: the source may have no pgvector
            rows = sql.SQL(_SEED_ROWS).format(model=sql.Literal(MODEL), vector=vector)
            with (
                deployment.connect() as source,
                source.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(rows)) as out,
                conn.cursor().copy(f"COPY cdc_embeddings ({_SEED_COLUMNS}) FROM STDIN") as into,
            ):
                for data in out:
                    into.write(data)
        if placeholder_index:
            conn.execute("CREATE INDEX cdc_embeddings_embedding_idx ON cdc_embeddings (chunk)")
        conn.execute("VACUUM ANALYZE cdc_embeddings")
