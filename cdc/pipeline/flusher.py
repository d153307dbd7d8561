"""The flushing half of the streamer: buffer -> embed -> sink -> confirm.

The flusher drains the buffer at transaction boundaries, applies the batch, and only then
confirms its LSN to the server (invariant 1; `cdc.replication.positions` holds the rules). A
transaction too large for the buffer is handed on in parts, each applied with a checkpoint
inside the transaction. Tables with a short `max_latency` are drained on their own when due,
and go between the slices of a large batch (`cdc.pipeline.slices`). When the stream goes quiet
(`cdc.pipeline.quiet`), a lone change is due after `buffer.idle_flush`, not `max_age`.

Writes are pipelined: while one batch (or slice) is written, the next is planned and embedded
(`WriterPool.prepare`), and written once the first committed, so the sink still commits in
order and each confirmation follows its own commit. A batch that shares a row with the write in
flight, or either of them holding a truncate or a resync's read, waits for that write first:
what the sink holds for its rows must be read after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from cdc.apply.parallel import PreparedBatch
from cdc.pipeline.buffer import Batch, FlushDecision
from cdc.pipeline.flow import STATUS_INTERVAL, Flow
from cdc.pipeline.heap import TRIM_AFTER_ROWS, release_free_memory
from cdc.pipeline.slices import SliceSizer, slice_target, supersede
from cdc.pipeline.toast import ToastResolver
from cdc.replication.changes import RowChange
from cdc.replication.positions import Position
from cdc.rows import SourceKey
from cdc.source.watermarks import ChunkRead

log = logging.getLogger(__name__)
# What runs once a write committed: the confirmation of the batch it ended, say.
Landed = Callable[[], Awaitable[None]]
# Seconds between looks at the standby while confirmations wait for it (failover slots).
STANDBY_RECHECK = 0.1


class Flusher:
    """Applies what the reader buffered until stop is set and the buffer is empty."""

    def __init__(self, flow: Flow, on_drained: Callable[[], None]) -> None:
        self._flow = flow
        self._on_drained = on_drained
        session = flow.session
        cfg = session.settings.buffer
        self._max_age = cfg.max_age
        self._latencies = {
            name: table.config.max_latency or cfg.max_age for name, table in session.tables.items()
        }
        self._slices = SliceSizer(
            slice_target([table.config.max_latency for table in session.tables.values()])
        )
        self._toast = ToastResolver(session.source, session.tables)
        # The write in flight, the rows it writes, and whether it truncates or saves a
        # resync's positions (then nothing is prepared beside it).
        self._writing: asyncio.Task[None] | None = None
        self._writing_keys: frozenset[SourceKey] = frozenset()
        self._writing_exclusive = False

    async def run(self) -> None:
        try:
            while (decision := await self._wait_for_flush()) is not None:
                if decision.drain_all:
                    await self._flush_all()
                else:
                    await self._flush_partial(self._flow.buffer.drain_tables(decision.tables))
        finally:
            await self._cancel_writing()

    async def _wait_for_flush(self) -> FlushDecision | None:
        """What to flush next; None once stopping with nothing left."""
        flow = self._flow
        while True:
            await self._check_writing()
            await flow.release_confirms()
            if flow.stop.is_set():
                if not flow.buffer.empty:
                    return FlushDecision(drain_all=True)
                await self._written()
                return None
            decision = self._flush_decision()
            if decision.drain_all or decision.tables:
                return decision
            flow.added.clear()
            # Held confirmations are looked at again soon: the standby is usually a few
            # milliseconds behind.
            wait = min(decision.wait, STANDBY_RECHECK if flow.confirms_held else STATUS_INTERVAL)
            await flow.wait_any(flow.added, wait)

    def _flush_decision(self) -> FlushDecision:
        flow = self._flow
        return flow.buffer.flush_decision(
            time.monotonic(), self._latencies.__getitem__, self._max_age, flow.quiet.due_at()
        )

    def _drained(self) -> None:
        self._on_drained()
        self._flow.space.set()

    async def _flush_all(self) -> None:
        """Apply everything buffered; its LSN is confirmed once its last write committed."""
        flow = self._flow
        batch = flow.buffer.drain()
        reads, flow.landing = flow.landing, []
        self._drained()
        flow.in_flight.append(batch)
        await self._apply_in_slices(batch, reads, partial(self._landed, batch, reads))

    async def _landed(self, batch: Batch, reads: Sequence[ChunkRead]) -> None:
        """`batch` is in the sink: confirm the LSN it covers."""
        flow = self._flow
        confirm = flow.positions.applied(batch.position)
        flow.session.checkpoint = batch.position
        flow.session.resyncs.landed(reads)
        await flow.confirm_applied(confirm)
        self._landed_batch(batch)
        if len(batch.rows) >= TRIM_AFTER_ROWS and flow.buffer.empty:
            release_free_memory()

    async def _flush_partial(self, batch: Batch) -> None:
        """Apply some tables' changes ahead of the rest; the checkpoint stays where it is."""
        flow = self._flow
        self._drained()
        flow.in_flight.append(batch)
        await self._apply(
            list(batch.truncated), batch.rows, None, landed=partial(self._partial_landed, batch)
        )

    async def _partial_landed(self, batch: Batch) -> None:
        self._landed_batch(batch)

    def _landed_batch(self, batch: Batch) -> None:
        flow = self._flow
        # By identity: batches compare by value, rows and all.
        flow.in_flight = [other for other in flow.in_flight if other is not batch]
        flow.publish_positions()  # lag falls the moment a batch lands

    async def _apply_in_slices(
        self, batch: Batch, reads: Sequence[ChunkRead], landed: Landed
    ) -> None:
        """Apply `batch` in slices; the last one carries its checkpoint and resync positions.
        Between slices, due tables with few changes waiting go first (`cdc.pipeline.slices`)."""
        truncated, rows = list(batch.truncated), batch.rows
        while True:
            size = self._slices.size(len(rows))
            part, rows = rows[:size], rows[size:]
            started = time.monotonic()
            if not rows:
                await self._apply(truncated, part, batch.position, reads, landed)
                self._slices.observe(len(part), time.monotonic() - started)
                return
            await self._apply(truncated, part, None)
            self._slices.observe(len(part), time.monotonic() - started)
            truncated = []
            urgent = self._urgent_tables()
            if urgent:
                newer = self._flow.buffer.drain_tables(urgent)
                rows = supersede(rows, newer)
                await self._flush_partial(newer)

    def _urgent_tables(self) -> list[str]:
        """Due tables whose waiting changes fit in one slice: small urgent changes."""
        fits = self._slices.size(0)
        waiting = self._flow.buffer.pending_rows()
        return [table for table in self._flush_decision().tables if waiting[table] <= fits]

    async def _apply(
        self,
        truncated: Sequence[str],
        changes: Sequence[RowChange],
        checkpoint: Position | None,
        reads: Sequence[ChunkRead] = (),
        landed: Landed | None = None,
    ) -> None:
        """Prepare these changes (beside the write in flight when they may), then start
        writing them once that write committed; `landed` runs after their commit."""
        rows = await self._toast.row_states(changes)
        positions = [read.position for read in reads]
        keys = frozenset(row.key for row in rows)
        exclusive = bool(truncated or positions)
        if exclusive or self._writing_exclusive or not keys.isdisjoint(self._writing_keys):
            await self._written()
        writers = self._flow.session.writers
        prepared = await writers.prepare(truncated, rows, checkpoint, positions)
        await self._written()
        self._writing_keys, self._writing_exclusive = keys, exclusive
        task = asyncio.create_task(self._write(prepared, checkpoint, landed), name="sink write")
        task.add_done_callback(lambda _: self._flow.added.set())  # the flusher looks again
        self._writing = task

    async def _write(
        self, prepared: PreparedBatch, checkpoint: Position | None, landed: Landed | None
    ) -> None:
        result = await self._flow.session.writers.commit(prepared)
        if result.written or result.removed or result.unchanged or result.dead_letters:
            log.debug(
                "applied %d rows%s: %d embedded, %d removed, %d unchanged",
                result.written + result.removed + result.unchanged,
                f" up to {checkpoint}" if checkpoint is not None else " ahead of the rest",
                result.embedded,
                result.removed,
                result.unchanged,
            )
        if landed is not None:
            await landed()

    async def _written(self) -> None:
        """Wait for the write in flight to commit (and land); raise its failure."""
        task, self._writing = self._writing, None
        self._writing_keys, self._writing_exclusive = frozenset(), False
        if task is not None:
            await task

    async def _check_writing(self) -> None:
        """A write that ended while the flusher waited: its failure ends the session now."""
        if self._writing is not None and self._writing.done():
            await self._written()

    async def _cancel_writing(self) -> None:
        """The session ends (stopped, or failed elsewhere): a write in flight rolls back and
        the slot sends its batch again on the next start."""
        task, self._writing = self._writing, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
