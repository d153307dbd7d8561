"""Per-table resyncs beside the stream, and the requests that start them.

`cdc resync --table T` records a request in `cdc_snapshots`; the streamer's `ResyncWorker`
polls for requests and re-reads each table in primary-key chunks between watermarks
(`cdc.source.watermarks`), then sweeps the sink's ids of the table for rows the source no longer
has.
Each chunk's rows enter the stream at their high watermark and reach the sink through the
buffer and the `Applier`, like any change: unchanged content costs no API call, and the chunk's
position commits with its vectors, so a resync killed mid-way resumes at its last landed chunk.

The worker also notices a full resync requested while it runs (the state row's snapshot flag
cleared by `cdc resync`) and ends the session, so the next one takes the snapshot again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from psycopg import sql

from cdc.apply.applier import Applier
from cdc.config import Settings
from cdc.db import Conn, connect
from cdc.errors import CdcError
from cdc.ids import key_values, render_source_id
from cdc.metrics import Metrics
from cdc.replication.changes import MARK_PREFIX
from cdc.replication.slots import slot_info
from cdc.sink.migrations import TypeWatch
from cdc.sink.progress import ProgressStore, ResyncPosition, TableProgress
from cdc.sink.schema import SinkNames
from cdc.sink.store import Sink
from cdc.source.estimates import estimate_rows
from cdc.source.reads import SourceTable, fetch_rows
from cdc.source.watermarks import ChunkRead, Edge, ReadRow, Windows, encode_mark

log = logging.getLogger(__name__)


class ResyncRequested(CdcError):
    """A full resync was requested while streaming: the session ends and starts over."""

    def __init__(self) -> None:
        super().__init__("a full resync was requested: taking the snapshot again", retriable=True)


def new_windows() -> Windows:
    return Windows(uuid.uuid4().hex[:12])


class ResyncWorker:
    """Runs the per-table resyncs requested of this slot, one chunk at a time."""

    def __init__(  # noqa: PLR0917
        self,
        settings: Settings,
        tables: dict[str, SourceTable],
        applier: Applier,
        metrics: Metrics,
        windows: Windows,
        stop: asyncio.Event,
        *,
        exit_when_idle: bool = False,
    ) -> None:
        self.settings = settings
        self.tables = tables
        self.applier = applier
        self.metrics = metrics
        self.windows = windows
        self.stop = stop
        self._exit_when_idle = exit_when_idle
        self._chunks = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}

    def landed(self, reads: Sequence[ChunkRead]) -> None:
        """The sink committed these reads (and their positions)."""
        for read in reads:
            future = self._waiting.pop(read.chunk, None)
            if future is not None and not future.done():
                future.set_result(None)

    async def run(self) -> None:
        async with AsyncExitStack() as stack:
            source = await connect(self.settings.source.dsn, "source")
            stack.push_async_callback(source.close)
            sink_conn = await connect(self.settings.sink_dsn, "sink")
            stack.push_async_callback(sink_conn.close)
            sink = Sink(sink_conn, self.settings)
            await self._request_new_tables(sink.progress)
            types = TypeWatch(sink_conn, SinkNames.of(self.settings), self.settings.source.slot)
            while not self.stop.is_set():
                state = await sink.state.load()
                if not state.snapshot_done:
                    raise ResyncRequested()
                # A rewrite changing a column's type reaches no row of the stream: re-read it.
                await types.check(source, list(self.tables.values()))
                work = [w for w in await sink.progress.open_resyncs() if self._known(w)]
                if not work and self._exit_when_idle:
                    self.stop.set()
                    return
                for item in work:
                    await _TableResync(self, source, sink, item).run()
                    if self.stop.is_set():
                        return
                if not work:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.stop.wait(), self.settings.snapshot.poll_interval
                        )

    def _known(self, item: TableProgress) -> bool:
        if item.source_table in self.tables:
            return True
        log.warning(
            "a resync of %s was requested, but it is not a configured table; ignoring it",
            item.source_table,
        )
        return False

    async def _request_new_tables(self, progress: ProgressStore) -> None:
        """Tables configured after the snapshot have only been streamed: read them whole."""
        recorded = {p.source_table for p in await progress.all()}
        added = [name for name in self.tables if name not in recorded]
        if added:
            log.info(
                "tables with no snapshot yet (added to the configuration?): resyncing %s", added
            )
            await progress.request_resync(added)

    def next_chunk(self) -> int:
        self._chunks += 1
        return self._chunks

    async def submit(self, source: Conn, read: ChunkRead) -> None:
        """Close the read's window and wait until the sink committed what it found."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[read.chunk] = future
        self.windows.expect(read)
        await emit_mark(source, self.windows.session, read.chunk, "high")
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait([future, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not future.done():
            self.windows.abandon(read.chunk)
            self._waiting.pop(read.chunk, None)


async def emit_mark(source: Conn, session: str, chunk: int, edge: Edge) -> None:
    await source.execute(
        "SELECT pg_logical_emit_message(true, %s::text, %s::text)",
        (MARK_PREFIX, encode_mark(session, chunk, edge)),
    )


class _TableResync:
    """One table's resync: the rows in key order, then the sink's ids swept for orphans."""

    def __init__(self, worker: ResyncWorker, source: Conn, sink: Sink, item: TableProgress) -> None:
        self._w = worker
        self._source = source
        self._sink = sink
        self._item = item
        self._table = worker.tables[item.source_table]
        self._rows = worker.settings.snapshot.chunk_rows

    async def run(self) -> None:
        item, table = self._item, self._table
        estimate = await estimate_rows(self._source, table)
        await self._sink.progress.start_resync(table.name, estimate)
        # The cache of what the sink holds is what a resync must not trust.
        self._w.applier.forget_tables([table.name])
        log.info(
            "resync of %s: %s (about %d rows)",
            table.name,
            "starting" if item.last_key is None and item.phase == "rows" else "resuming",
            estimate,
        )
        if item.phase == "rows" and not await self._rows_phase(item.last_key):
            return
        last_id = item.last_source_id if item.phase == "orphans" else None
        await self._orphans_phase(last_id)

    async def _rows_phase(self, last_key: tuple[str, ...] | None) -> bool:
        """Read the table in key order; True when it reached the end."""
        counter = self._w.metrics.snapshot_rows.labels(table=self._table.name)
        while not self._w.stop.is_set():
            chunk = await self._open_window()
            rows = await read_after(self._source, self._table, last_key, self._rows)
            present = [to_read_row(self._table, row) for row in rows]
            if present:
                last_key = present[-1].key
            end = len(rows) < self._rows
            position = ResyncPosition(
                self._table.name, "orphans" if end else "rows", last_key, None, len(rows)
            )
            await self._w.submit(
                self._source, ChunkRead(chunk, self._table.name, present, [], position)
            )
            counter.inc(len(rows))
            if end:
                return True
        return False

    async def _orphans_phase(self, last_id: str | None) -> None:
        width = len(self._table.key_names)
        while not self._w.stop.is_set():
            ids = await self._sink_ids_after(last_id)
            chunk = await self._open_window()
            parsed = [key_values(source_id, width) for source_id in ids]
            keys = [key for key in parsed if key is not None]
            found = await fetch_rows(self._source, self._table, keys)
            # An id no row of the table could have (see `cdc.ids`) is an orphan like any other.
            absent = [(i, k or ()) for i, k in zip(ids, parsed, strict=True) if k not in found]
            if ids:
                last_id = ids[-1]
            end = len(ids) < self._rows
            position = ResyncPosition(self._table.name, "orphans", None, last_id, 0, finished=end)
            read = ChunkRead(chunk, self._table.name, [], absent, position)
            await self._w.submit(self._source, read)
            if end:
                log.info("resync of %s: done", self._table.name)
                return

    async def _open_window(self) -> int:
        chunk = self._w.next_chunk()
        self._w.windows.opening(chunk, self._table.name)
        await emit_mark(self._source, self._w.windows.session, chunk, "low")
        return chunk

    async def _sink_ids_after(self, last_id: str | None) -> list[str]:
        return await self._sink.reads.source_ids_after(self._table.name, last_id, self._rows)


async def read_after(
    conn: Conn, table: SourceTable, last_key: Sequence[str] | None, limit: int
) -> list[tuple[str | None, ...]]:
    """Up to `limit` rows of `table` after `last_key`, in key order (key, content, metadata)."""
    # Qualified, so ORDER BY and WHERE mean the key columns, not the text output columns of
    # the same names.
    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in table.key_names)
    query = sql.SQL("SELECT {} FROM {} AS t").format(table.select_list(), table.identifier)
    params: list[Any] = []
    if last_key is not None:
        bounds = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for t in table.key_types)
        query += sql.SQL(" WHERE ({}) > ({})").format(keys, bounds)
        params += list(last_key)
    query += sql.SQL(" ORDER BY {} LIMIT %s").format(keys)
    params.append(limit)
    cursor = await conn.execute(query, params)
    return list(await cursor.fetchall())


def to_read_row(table: SourceTable, row: Sequence[str | None]) -> ReadRow:
    width = len(table.key_names)
    content_end = width + len(table.config.content_columns)
    key = tuple(str(value) for value in row[:width])
    return ReadRow(
        source_id=render_source_id(key),
        key=key,
        content=tuple(row[width:content_end]),
        metadata=tuple(row[content_end:]),
    )


async def request_table_resync(settings: Settings, tables: Sequence[str]) -> None:
    conn = await connect(settings.sink_dsn, "sink")
    try:
        await ProgressStore(conn, SinkNames.of(settings), settings.source.slot).request_resync(
            tables
        )
    finally:
        await conn.close()


async def slot_active(settings: Settings) -> bool:
    conn = await connect(settings.source.dsn, "source")
    try:
        slot = await slot_info(conn, settings.source.slot)
    finally:
        await conn.close()
    return slot is not None and slot.active


async def wait_for_resyncs(
    settings: Settings,
    tables: Sequence[str],
    say: Callable[[str], None],
    stop: asyncio.Event,
) -> None:
    """Poll until the running streamer finished resyncing `tables`, saying how far it got."""
    conn = await connect(settings.sink_dsn, "sink")
    store = ProgressStore(conn, SinkNames.of(settings), settings.source.slot)
    last = ""
    try:
        while not stop.is_set():
            mine = [p for p in await store.all() if p.source_table in tables]
            if all(p.status == "done" for p in mine):
                say("resync complete")
                return
            line = ", ".join(
                f"{p.source_table}: {p.status} {p.rows_done}/{p.rows_estimated or '?'}"
                for p in mine
            )
            if line != last:
                say(line)
                last = line
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await conn.close()
