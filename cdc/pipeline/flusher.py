"""The flushing half of the streamer: buffer -> embed -> sink -> confirm.

The flusher drains the buffer at transaction boundaries, applies the batch, and only then
confirms its LSN to the server (invariant 1; `cdc.replication.positions` holds the rules). A
transaction too large for the buffer is handed on in parts, each applied with a checkpoint
inside the transaction. Tables with a short `max_latency` are drained on their own when due,
and go between the slices of a large batch (`cdc.pipeline.slices`). When the stream goes quiet
(`cdc.pipeline.quiet`), a lone change is due after `buffer.idle_flush`, not `max_age`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from cdc.pipeline.buffer import Batch, FlushDecision
from cdc.pipeline.flow import STATUS_INTERVAL, Flow
from cdc.pipeline.heap import TRIM_AFTER_ROWS, release_free_memory
from cdc.pipeline.slices import SliceSizer, slice_target, supersede
from cdc.pipeline.toast import ToastResolver
from cdc.replication.changes import RowChange
from cdc.replication.positions import Position
from cdc.source.watermarks import ChunkRead

log = logging.getLogger(__name__)
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

    async def run(self) -> None:
        while (decision := await self._wait_for_flush()) is not None:
            if decision.drain_all:
                await self._flush_all()
            else:
                await self._flush_partial(self._flow.buffer.drain_tables(decision.tables))

    async def _wait_for_flush(self) -> FlushDecision | None:
        """What to flush next; None once stopping with nothing left."""
        flow = self._flow
        while True:
            await flow.release_confirms()
            if flow.stop.is_set():
                return None if flow.buffer.empty else FlushDecision(drain_all=True)
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
        """Apply everything buffered, then confirm the LSN it covers."""
        flow = self._flow
        batch = flow.buffer.drain()
        reads, flow.landing = flow.landing, []
        self._drained()
        flow.in_flight.append(batch)
        await self._apply_in_slices(batch, reads)
        confirm = flow.positions.applied(batch.position)
        flow.session.checkpoint = batch.position
        flow.session.resyncs.landed(reads)
        await flow.confirm_applied(confirm)
        flow.in_flight.pop()
        flow.publish_positions()  # lag falls the moment a batch lands
        if len(batch.rows) >= TRIM_AFTER_ROWS and flow.buffer.empty:
            release_free_memory()

    async def _flush_partial(self, batch: Batch) -> None:
        """Apply some tables' changes ahead of the rest; the checkpoint stays where it is."""
        flow = self._flow
        self._drained()
        flow.in_flight.append(batch)
        await self._apply(list(batch.truncated), batch.rows, None)
        flow.in_flight.pop()
        flow.publish_positions()

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
    ) -> None:
        rows = await self._toast.row_states(changes)
        positions = [read.position for read in reads]
        result = await self._flow.session.writers.apply(truncated, rows, checkpoint, positions)
        if rows or truncated:
            log.debug(
                "applied %d rows%s: %d embedded, %d removed, %d unchanged",
                len(rows),
                f" up to {checkpoint}" if checkpoint is not None else " ahead of the rest",
                result.embedded,
                result.removed,
                result.unchanged,
            )
