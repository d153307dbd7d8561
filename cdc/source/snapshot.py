"""The initial snapshot (and a full resync): embed the rows that exist when the slot is created.

The slot exports the snapshot it starts from; reading the tables inside that snapshot and then
streaming from the slot's consistent point misses nothing and applies nothing twice. The rows
take the same embed -> sink path as streamed changes, so content already in the sink (a
snapshot interrupted and started again, or a full resync) costs no API call.

A sink table that starts empty is loaded without its HNSW index, which is built once at the
end (`cdc.sink.indexes`). Reading the next batch from the source overlaps embedding and writing the
current ones, and `snapshot.workers` batches are embedded and written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection, sql

from cdc.apply.applier import Applier
from cdc.config import Settings
from cdc.db import Conn, connect
from cdc.metrics import Metrics
from cdc.replication.lsn import Lsn
from cdc.replication.stream import ReplicationStream
from cdc.rows import RowState
from cdc.sink.indexes import build_indexes, defer_indexes
from cdc.sink.seen import SeenKeys
from cdc.sink.store import Sink
from cdc.source.estimates import estimate_rows
from cdc.source.reads import SourceTable, row_state, stream_table

log = logging.getLogger(__name__)
# Seconds between progress lines in the log.
PROGRESS_LOG_INTERVAL = 10.0
# Batches read ahead of the one being embedded.
READ_AHEAD = 2


class SnapshotInterrupted(Exception):
    """Stop was requested mid-snapshot; the next start takes it again."""


@dataclass
class SnapshotParts:
    settings: Settings
    sink: Sink
    applier: Applier
    metrics: Metrics
    stop: asyncio.Event


async def take_snapshot(
    parts: SnapshotParts, stream: ReplicationStream, tables: Sequence[SourceTable]
) -> Lsn:
    """Create the slot, embed every existing row, and return the LSN streaming starts from.

    The caller records the snapshot as done (with that LSN) when it is ready to.
    """
    sink, settings = parts.sink, parts.settings
    created = stream.create_slot()
    log.info("created slot at %s; snapshot %s", created.consistent_point, created.snapshot_name)
    await sink.mark_snapshot(done=False, checkpoint=None)
    deferred = await defer_indexes(sink.connection, sink.targets.names([t.name for t in tables]))
    seen = SeenKeys(sink)
    await seen.start()
    async with AsyncExitStack() as stack:
        writers = await _writers(stack, parts)
        conn = await AsyncConnection.connect(settings.source.dsn)
        stack.push_async_callback(conn.close)
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction():
            await conn.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(created.snapshot_name))
            )
            estimates = {t.name: await estimate_rows(conn, t) for t in tables}
            await sink.progress.begin_snapshot(estimates)
            for table in tables:
                await _snapshot_table(
                    parts, conn, table, seen, estimates[table.name], writers=writers
                )
    removed = await seen.remove_unseen([t.name for t in tables])
    if removed:
        log.info("snapshot removed %d sink rows whose source rows are gone", removed)
    await build_indexes(
        sink.connection, deferred, settings.sink.vector_type, settings.snapshot.index_build_memory
    )
    await sink.progress.finish_snapshot([t.name for t in tables])
    return created.consistent_point


async def _snapshot_table(
    parts: SnapshotParts,
    conn: Conn,
    table: SourceTable,
    seen: SeenKeys,
    estimate: int,
    *,
    writers: Sequence[Applier],
) -> None:
    """Read `table` and hand each batch to an idle writer; up to len(writers) are embedded and
    written at once (the rows come from one snapshot, so their order does not matter)."""
    meter = _Meter(table.name, estimate)
    counter = parts.metrics.snapshot_rows.labels(table=table.name)
    idle = list(writers)
    busy: set[asyncio.Task[tuple[Applier, int]]] = set()

    async def settle(until_idle: bool) -> None:
        nonlocal busy
        while busy and (until_idle or not idle):
            done, busy = await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                applier, rows = task.result()
                idle.append(applier)
                counter.inc(rows)
                meter.add(rows)
            await parts.sink.progress.snapshot_read(table.name, meter.done)

    try:
        async for states in _read_ahead(conn, table, parts.settings.snapshot.batch_rows):
            if parts.stop.is_set():
                raise SnapshotInterrupted(f"stopped during the snapshot of {table.name}")
            await seen.add([state.key for state in states])
            await settle(until_idle=False)
            busy.add(asyncio.create_task(_write(idle.pop(), states)))
        await settle(until_idle=True)
    finally:
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
    meter.finish()


async def _write(applier: Applier, states: list[RowState]) -> tuple[Applier, int]:
    await applier.apply([], states, checkpoint=None)
    return applier, len(states)


async def _writers(stack: AsyncExitStack, parts: SnapshotParts) -> list[Applier]:
    """One applier per concurrent writer, each on its own sink connection (a transaction
    cannot be shared); a single writer is the session's own."""
    count = parts.settings.snapshot.workers
    if count <= 1:
        return [parts.applier]
    writers = []
    for _ in range(count):
        conn = await connect(parts.settings.sink_dsn, "sink")
        stack.push_async_callback(conn.close)
        writers.append(parts.applier.sibling(await parts.sink.sibling(conn)))
    return writers


async def _read_ahead(
    conn: Conn, table: SourceTable, batch_rows: int
) -> AsyncIterator[list[RowState]]:
    """The table's rows as row states, read by a task that stays `READ_AHEAD` batches ahead."""
    queue: asyncio.Queue[list[RowState] | None] = asyncio.Queue(READ_AHEAD)

    async def produce() -> None:
        async for rows in stream_table(conn, table, batch_rows):
            await queue.put([row_state(table, row) for row in rows])
        await queue.put(None)

    reader = asyncio.create_task(produce(), name=f"snapshot-read-{table.name}")
    try:
        while (batch := await queue.get()) is not None:
            yield batch
        await reader  # surfaces a read error
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


class _Meter:
    """Rows done against the estimate, logged now and then with the rate and time left."""

    def __init__(self, table: str, estimate: int) -> None:
        self.table = table
        self.estimate = estimate
        self.done = 0
        self.started = time.monotonic()
        self.logged = self.started

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.logged >= PROGRESS_LOG_INTERVAL:
            self.logged = now
            rate = self.done / max(now - self.started, 1e-9)
            left = max(self.estimate - self.done, 0) / rate if rate else 0.0
            log.info(
                "snapshot of %s: %d of ~%d rows (%.0f rows/s, ~%.0fs left)",
                self.table,
                self.done,
                self.estimate,
                rate,
                left,
            )

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        log.info(
            "snapshot of %s: %d rows in %.1fs (%.0f rows/s)",
            self.table,
            self.done,
            elapsed,
            self.done / max(elapsed, 1e-9),
        )
