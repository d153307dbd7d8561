"""The streamer: frames -> decode -> transactions -> buffer -> embed -> sink -> confirm.

Composes the two halves that share one event loop and one `Flow`: the `Reader`
(`cdc.pipeline.reader`) fills the buffer, the `Flusher` (`cdc.pipeline.flusher`) applies and
confirms. The session's resync worker runs beside them; the runner composed it.

On stop, reading ends and what is buffered is applied within `shutdown_timeout`; a batch still
in flight then is abandoned (its sink transaction rolls back) and the slot sends it again on
the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cdc.pipeline.flow import Flow, Session
from cdc.pipeline.flusher import Flusher
from cdc.pipeline.reader import Reader

log = logging.getLogger(__name__)

# Of `shutdown_timeout`, the seconds kept back from the final flush to abandon a batch in
# flight (cancelling its queries) and close the connections.
SHUTDOWN_RESERVE = 5.0


class Streamer:
    """Streams one slot into the sink until `stop` is set; returns after a clean drain."""

    def __init__(self, session: Session, stop: asyncio.Event) -> None:
        self._s = session
        self._stop = stop
        self._flow = Flow(session, stop)
        self._reader = Reader(self._flow)
        self._flusher = Flusher(self._flow, on_drained=self._reader.room_changed)

    async def run(self) -> None:
        s = self._s
        # Everything up to the checkpoint is in the sink: start there (the server starts at
        # the slot's confirmed position if that is later).
        s.stream.start(s.checkpoint.lsn)
        self._flow.observer.streaming(True)
        log.info("streaming slot %s from %s", s.settings.source.slot, s.checkpoint)
        reader = asyncio.create_task(self._reader.run(), name="reader")
        flusher = asyncio.create_task(self._flusher.run(), name="flusher")
        resyncs = asyncio.create_task(s.resyncs.run(), name="resyncs")
        stopping = asyncio.create_task(self._stop.wait(), name="stopping")
        tasks = {reader, flusher, resyncs, stopping}
        try:
            await self._until_flushed(flusher, tasks)
        finally:
            self._flow.observer.streaming(False)
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
        flow = self._flow
        in_flight = sum(len(batch.rows) for batch in flow.in_flight)
        log.warning(
            "shutdown_timeout: abandoning %d rows being applied and %d buffered; the sink "
            "stays at %s and the slot sends them again on the next start",
            in_flight,
            flow.buffer.rows,
            flow.positions.checkpoint,
        )
