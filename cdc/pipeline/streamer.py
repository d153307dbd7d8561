"""The streamer: frames -> decode -> transactions -> buffer -> embed -> sink -> confirm.

Two coroutines share one event loop. The reader drains every frame the socket holds per
wake-up, decodes and assembles them synchronously (no task hop per message) and stops reading
while the buffer is full. The flusher drains the buffer at transaction boundaries, applies the
batch, and only then confirms its LSN to the server (`cdc.replication.positions` holds the rules). A
transaction too large for the buffer is handed on in parts, each applied with a checkpoint
inside the transaction. Tables with a short `max_latency` are drained on their own when due,
and go between the slices of a large batch (`cdc.pipeline.slices`).

On stop, reading ends and what is buffered is applied within `shutdown_timeout`; a batch still
in flight then is abandoned (its sink transaction rolls back) and the slot sends it again on
the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdc.apply.applier import Applier
from cdc.config import Settings
from cdc.db import Conn
from cdc.metrics import Health, Metrics
from cdc.pipeline.buffer import Batch, ChangeBuffer, FlushDecision
from cdc.pipeline.heap import TRIM_AFTER_ROWS, release_free_memory
from cdc.pipeline.slices import SliceSizer, slice_target, supersede
from cdc.replication.changes import RowChange, Transaction
from cdc.replication.frames import (
    XLOGDATA_HEADER,
    Keepalive,
    is_xlogdata,
    parse_frame,
    pg_timestamp,
    xlogdata_wal_end,
)
from cdc.replication.messages import UNCHANGED_TOAST, Value
from cdc.replication.pgoutput import PgOutputDecoder
from cdc.replication.positions import Position, PositionRules
from cdc.replication.stream import MAX_FRAMES_PER_READ, ReplicationStream
from cdc.replication.transactions import TransactionAssembler
from cdc.rows import RowState
from cdc.source.reads import SourceTable, fetch_rows
from cdc.source.resync import ResyncWorker, new_windows
from cdc.source.watermarks import ChunkRead

log = logging.getLogger(__name__)

# Standby status updates at least this often, so the server never times us out.
STATUS_INTERVAL = 10.0
# Of `shutdown_timeout`, the seconds kept back from the final flush to abandon a batch in
# flight (cancelling its queries) and close the connections.
SHUTDOWN_RESERVE = 5.0


@dataclass
class Session:
    """The connections and parts one streaming session runs on."""

    settings: Settings
    stream: ReplicationStream
    source: Conn
    tables: dict[str, SourceTable]
    applier: Applier
    metrics: Metrics
    health: Health
    checkpoint: Position
    # End the session once no per-table resync is left (`cdc resync --table` with no `run`).
    exit_when_resynced: bool = False


class Streamer:
    """Streams one slot into the sink until `stop` is set; returns after a clean drain."""

    def __init__(self, session: Session, stop: asyncio.Event) -> None:
        self._s = session
        self._stop = stop
        self._windows = new_windows()
        self._resyncs = ResyncWorker(
            session.settings,
            session.tables,
            session.applier,
            session.metrics,
            self._windows,
            stop,
            exit_when_idle=session.exit_when_resynced,
        )
        # Resync reads handed to the buffer, to be saved with the next batch applied.
        self._landing: list[ChunkRead] = []
        self._positions = PositionRules(session.checkpoint)
        cfg = session.settings.buffer
        self._buffer = ChangeBuffer(
            max_rows=cfg.max_rows, max_bytes=cfg.max_bytes, position=session.checkpoint
        )
        self._max_age = cfg.max_age
        self._latencies = {
            name: table.config.max_latency or cfg.max_age for name, table in session.tables.items()
        }
        self._slices = SliceSizer(
            slice_target([table.config.max_latency for table in session.tables.values()])
        )
        self._decoder = PgOutputDecoder()
        self._assembler = TransactionAssembler(
            {name: table.config for name, table in session.tables.items()},
            {name: table.key_names for name, table in session.tables.items()},
            changes_to_skip=self._positions.changes_to_skip,
        )
        self._assembler.part_limit = self._buffer.room
        # Frames read but not yet decoded: the buffer filled up while decoding them.
        self._unread: list[memoryview] = []
        self._added = asyncio.Event()
        self._space = asyncio.Event()
        # Batches being applied, a stack: a full one, and a partial one between two of its
        # slices.
        self._in_flight: list[Batch] = []
        self._server_lsn = 0
        self._change_counts: Counter[tuple[str, str]] = Counter()
        self._last_status = 0.0

    async def run(self) -> None:
        s = self._s
        # Everything up to the checkpoint is in the sink: start there (the server starts at
        # the slot's confirmed position if that is later).
        s.stream.start(s.checkpoint.lsn)
        s.health.streaming = s.health.streaming_seen = True
        s.metrics.up.set(1)
        log.info("streaming slot %s from %s", s.settings.source.slot, s.checkpoint)
        reader = asyncio.create_task(self._read_loop(), name="reader")
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        resyncs = asyncio.create_task(self._resyncs.run(), name="resyncs")
        stopping = asyncio.create_task(self._stop.wait(), name="stopping")
        tasks = {reader, flusher, resyncs, stopping}
        try:
            await self._until_flushed(flusher, tasks)
        finally:
            s.health.streaming = False
            s.metrics.up.set(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _until_flushed(
        self, flusher: asyncio.Task[None], tasks: set[asyncio.Task[Any]]
    ) -> None:
        """Wait for the flusher to end (after the final drain); any task's failure ends the
        session. Once stopping, the final drain has `shutdown_timeout` less a reserve: a batch
        still in flight then is abandoned, rolled back, and sent again on the next start."""
        deadline: float | None = None
        pending = set(tasks)
        while flusher in pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if self._stop.is_set() and deadline is None:
                budget = self._s.settings.shutdown_timeout
                deadline = time.monotonic() + max(budget - SHUTDOWN_RESERVE, budget / 2)
            for task in done:
                task.result()
            if not done and flusher in pending:
                self._abandon()
                return

    def _abandon(self) -> None:
        in_flight = sum(len(batch.rows) for batch in self._in_flight)
        log.warning(
            "shutdown_timeout: abandoning %d rows being applied and %d buffered; the sink "
            "stays at %s and the slot sends them again on the next start",
            in_flight,
            self._buffer.rows,
            self._positions.checkpoint,
        )

    # ---- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        stream = self._s.stream
        while not self._stop.is_set():
            if self._buffer.full:
                self._space.clear()
                await self._wait_any(self._space, STATUS_INTERVAL)
                self._heartbeat()
                continue
            fresh = not self._unread
            frames = stream.read_frames() if fresh else self._unread
            self._unread = self._on_frames(frames)
            # Published before waiting, so what was just read shows in /metrics at once.
            self._heartbeat()
            if fresh and not self._unread and len(frames) < MAX_FRAMES_PER_READ:
                await stream.wait_readable(min(STATUS_INTERVAL, 1.0))
            else:
                await asyncio.sleep(0)  # libpq may hold more than the socket shows
        self._added.set()

    async def _wait_any(self, event: asyncio.Event, timeout: float) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        other = asyncio.ensure_future(event.wait())
        await asyncio.wait({stop, other}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        other.cancel()

    def _on_frames(self, frames: list[memoryview]) -> list[memoryview]:
        """Decode and assemble a batch of frames: the hot path, no await, no task hop.
        Returns the frames left undecoded because the buffer filled up."""
        decode, feed = self._decoder.decode, self._assembler.feed
        last_data: memoryview | None = None
        rest: list[memoryview] = []
        for index, data in enumerate(frames):
            if is_xlogdata(data):
                last_data = data
                transaction = feed(decode(data[XLOGDATA_HEADER:]))
                if transaction is not None:
                    self._accept(transaction)
                    if self._buffer.full:
                        rest = frames[index + 1 :]
                        break
            else:
                frame = parse_frame(data)
                assert isinstance(frame, Keepalive)
                self._server_lsn = max(self._server_lsn, frame.wal_end)
                self._on_keepalive(frame)
        if last_data is not None:
            self._server_lsn = max(self._server_lsn, xlogdata_wal_end(last_data))
        return rest

    def _accept(self, transaction: Transaction) -> None:
        end = None if transaction.is_part else transaction.end_lsn
        if self._positions.already_applied(transaction.commit_lsn, end):
            return  # applied before a restart; the server may send it again
        counts = self._change_counts
        for change in transaction.changes:
            op = change.op if isinstance(change, RowChange) else "truncate"
            counts[(change.table, op)] += 1
        if transaction.marks or self._windows.active:
            for landed in self._windows.observe(transaction):
                # The resync's read enters the stream here, at its high watermark.
                transaction.changes.extend(landed.changes)
                self._landing.append(landed.read)
        self._buffer.add(transaction, time.monotonic())
        self._assembler.part_limit = self._buffer.room
        self._added.set()

    def _on_keepalive(self, keepalive: Keepalive) -> None:
        # Nothing received is unapplied: the server's position is safe to confirm, so a quiet
        # publication does not make the server keep WAL for us.
        nothing_pending = self._assembler.idle and self._buffer.empty and not self._in_flight
        confirm = self._positions.keepalive(keepalive.wal_end, nothing_pending)
        if confirm is not None:
            self._s.stream.confirm(confirm)
            self._last_status = time.monotonic()
        elif keepalive.reply_requested:
            self._send_status()

    def _heartbeat(self) -> None:
        s = self._s
        s.health.beat()
        now = time.monotonic()
        if now - self._last_status >= STATUS_INTERVAL:
            self._send_status()
        m = s.metrics
        # Counted locally per change, published per wake-up: a labelled counter lookup per
        # change would cost as much as decoding it.
        for (table, op), count in self._change_counts.items():
            m.changes.labels(table=table, op=op).inc(count)
        self._change_counts.clear()
        self._publish_positions()

    def _publish_positions(self) -> None:
        s, m = self._s, self._s.metrics
        m.buffer_rows.set(self._buffer.rows)
        m.confirmed_lsn.set(int(s.stream.confirmed))
        m.replication_lag_bytes.set(max(0, self._server_lsn - s.stream.confirmed))
        m.replication_lag_seconds.set(self._lag_seconds())

    def _send_status(self) -> None:
        self._s.stream.send_status()
        self._last_status = time.monotonic()

    def _lag_seconds(self) -> float:
        pending = [batch.oldest_commit_time for batch in self._in_flight]
        pending.append(self._buffer.oldest_commit_time)
        times = [commit_time for commit_time in pending if commit_time is not None]
        if not times:
            return 0.0
        return max(0.0, time.time() - pg_timestamp(min(times)).timestamp())

    # ---- flushing ---------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while (decision := await self._wait_for_flush()) is not None:
            if decision.drain_all:
                await self._flush_all()
            else:
                await self._flush_partial(self._buffer.drain_tables(decision.tables))

    async def _wait_for_flush(self) -> FlushDecision | None:
        """What to flush next; None once stopping with nothing left."""
        while True:
            if self._stop.is_set():
                return None if self._buffer.empty else FlushDecision(drain_all=True)
            decision = self._flush_decision()
            if decision.drain_all or decision.tables:
                return decision
            self._added.clear()
            await self._wait_any(self._added, min(decision.wait, STATUS_INTERVAL))

    def _flush_decision(self) -> FlushDecision:
        return self._buffer.flush_decision(
            time.monotonic(), self._latencies.__getitem__, self._max_age
        )

    async def _flush_all(self) -> None:
        """Apply everything buffered, then confirm the LSN it covers."""
        batch = self._buffer.drain()
        self._assembler.part_limit = self._buffer.room
        reads, self._landing = self._landing, []
        self._space.set()
        self._in_flight.append(batch)
        await self._apply_in_slices(batch, reads)
        confirm = self._positions.applied(batch.position)
        self._s.checkpoint = batch.position
        self._resyncs.landed(reads)
        self._s.stream.confirm(confirm)
        self._last_status = time.monotonic()
        self._in_flight.pop()
        self._publish_positions()  # lag falls the moment a batch lands
        if len(batch.rows) >= TRIM_AFTER_ROWS and self._buffer.empty:
            release_free_memory()

    async def _flush_partial(self, batch: Batch) -> None:
        """Apply some tables' changes ahead of the rest; the checkpoint stays where it is."""
        self._assembler.part_limit = self._buffer.room
        self._space.set()
        self._in_flight.append(batch)
        await self._apply(list(batch.truncated), batch.rows, None)
        self._in_flight.pop()
        self._publish_positions()

    async def _apply_in_slices(self, batch: Batch, reads: Sequence[ChunkRead]) -> None:
        """Apply `batch` in slices; the last one carries its checkpoint and resync positions.
        Between slices, due tables with few changes waiting go first (`cdc.pipeline.slices`)."""
        truncated, rows = list(batch.truncated), batch.rows
        while True:
            size = self._slices.size(len(rows))
            part, rows = rows[:size], rows[size:]
            last = not rows
            started = time.monotonic()
            await self._apply(
                truncated, part, batch.position if last else None, reads if last else ()
            )
            self._slices.observe(len(part), time.monotonic() - started)
            if last:
                return
            truncated = []
            urgent = self._urgent_tables()
            if urgent:
                newer = self._buffer.drain_tables(urgent)
                rows = supersede(rows, newer)
                await self._flush_partial(newer)

    def _urgent_tables(self) -> list[str]:
        """Due tables whose waiting changes fit in one slice: small urgent changes."""
        fits = self._slices.size(0)
        waiting = self._buffer.pending_rows()
        return [table for table in self._flush_decision().tables if waiting[table] <= fits]

    async def _apply(
        self,
        truncated: Sequence[str],
        changes: Sequence[RowChange],
        checkpoint: Position | None,
        reads: Sequence[ChunkRead] = (),
    ) -> None:
        rows = await self._row_states(changes)
        positions = [read.position for read in reads]
        result = await self._s.applier.apply(truncated, rows, checkpoint, positions)
        if rows or truncated:
            log.debug(
                "applied %d rows%s: %d embedded, %d removed, %d unchanged",
                len(rows),
                f" up to {checkpoint}" if checkpoint is not None else " ahead of the rest",
                result.embedded,
                result.removed,
                result.unchanged,
            )

    async def _row_states(self, changes: Sequence[RowChange]) -> list[RowState]:
        current = await self._fetch_unchanged_toast(changes)
        states = []
        for change in changes:
            state = self._row_state(change, current)
            if state is not None:
                states.append(state)
        return states

    async def _fetch_unchanged_toast(
        self, changes: Sequence[RowChange]
    ) -> dict[tuple[str, tuple[str, ...]], tuple[str | None, ...]]:
        """Current values of rows the stream sent with unchanged-TOAST placeholders."""
        wanted: dict[str, list[tuple[str, ...]]] = {}
        for change in changes:
            if not change.is_delete and change.has_unchanged_toast():
                wanted.setdefault(change.table, []).append(change.key)
        found: dict[tuple[str, tuple[str, ...]], tuple[str | None, ...]] = {}
        for table, keys in wanted.items():
            rows = await fetch_rows(self._s.source, self._s.tables[table], keys)
            found.update({(table, key): values for key, values in rows.items()})
        return found

    def _row_state(
        self,
        change: RowChange,
        current: dict[tuple[str, tuple[str, ...]], tuple[str | None, ...]],
    ) -> RowState | None:
        lsn = change.commit_lsn
        if change.is_delete:
            return RowState(change.table, change.source_id, "", {}, lsn, deleted=True)
        config = self._s.tables[change.table].config
        content, metadata = change.content or (), change.metadata or ()
        if change.has_unchanged_toast():
            fetched = current.get((change.table, change.key))
            if fetched is None:
                return None  # gone since; its delete is on the way
            width = len(config.content_columns)
            content = _fill(content, fetched[:width])
            metadata = _fill(metadata, fetched[width:])
        # No placeholder is left here: each was filled from the buffer or the source.
        return RowState(
            change.table,
            change.source_id,
            config.content.render(content),  # type: ignore[arg-type]
            dict(zip(config.metadata, metadata, strict=True)),
            lsn,
        )


def _fill(values: Sequence[Value], current: Sequence[str | None]) -> tuple[Value, ...]:
    return tuple(c if v is UNCHANGED_TOAST else v for v, c in zip(values, current, strict=True))
