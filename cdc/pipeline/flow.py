"""What the reader and the flusher of one streaming session share.

The `Session` is what the runner hands the streamer: connections and parts, the resync worker
it composed, and the checkpoint to start from. The `Flow` is the state between the two halves:
the buffer, the position rules (`cdc.replication.positions`), the batches in flight, the events
each waits on, whether the stream went quiet (`cdc.pipeline.quiet`), and the standby-status
clock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from cdc.apply.applier import Applier
from cdc.apply.parallel import WriterPool
from cdc.config import Settings
from cdc.db import Conn
from cdc.metrics import Health, Metrics
from cdc.pipeline.buffer import Batch, ChangeBuffer
from cdc.pipeline.observer import StreamObserver
from cdc.pipeline.quiet import Quiet
from cdc.replication.lsn import Lsn
from cdc.replication.positions import Position, PositionRules, StandbyGate, WriterPositions
from cdc.replication.stream import ReplicationStream
from cdc.source.reads import SourceTable
from cdc.source.resync import ResyncWorker
from cdc.source.server import standby_flush, wal_position
from cdc.source.watermarks import ChunkRead

# Standby status updates at least this often, so the server never times us out.
STATUS_INTERVAL = 10.0


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
    # Per-table resyncs (`cdc resync --table`); its watermark windows see every transaction.
    resyncs: ResyncWorker
    # The sink writers streamed batches are applied with (`sink.writers`), and where each
    # writer of the last session stood, as the sink stored them (None: one writer).
    writers: WriterPool
    writer_positions: WriterPositions | None = None


class Flow:
    """The buffer between reader and flusher, and the positions both move."""

    def __init__(self, session: Session, stop: asyncio.Event) -> None:
        self.session = session
        self.stop = stop
        self.positions = PositionRules(session.checkpoint, session.writer_positions)
        cfg = session.settings.buffer
        self.buffer = ChangeBuffer(
            max_rows=cfg.max_rows, max_bytes=cfg.max_bytes, position=session.checkpoint
        )
        self.observer = StreamObserver(session.metrics, session.health)
        # Resync reads handed to the buffer, to be saved with the next batch applied.
        self.landing: list[ChunkRead] = []
        # Batches being applied, a stack: a full one, and a partial one between two of its
        # slices.
        self.in_flight: list[Batch] = []
        self.added = asyncio.Event()  # the reader added changes (or stopped)
        self.space = asyncio.Event()  # the flusher drained the buffer
        self.server_lsn = Lsn(0)  # the furthest WAL end the reader saw
        # Whether the stream went quiet (the reader tells), so a lone change need not wait.
        self.quiet = Quiet(cfg.idle_flush)
        self._last_status = 0.0
        # With a failover slot, confirmations wait for the standby (`StandbyGate`).
        self.gate = StandbyGate() if session.settings.source.failover else None

    @property
    def confirms_held(self) -> bool:
        return self.gate is not None and self.gate.pending

    async def confirm_applied(self, lsn: Lsn) -> None:
        """Confirm `lsn`, which the sink has just committed; with a failover slot, once the
        standby has that commit."""
        if self.gate is None:
            self.confirm(lsn)
            return
        self.gate.hold(lsn, await wal_position(self.session.source))
        await self.release_confirms()

    async def release_confirms(self) -> None:
        """Confirm what the standby now has of the held positions."""
        if self.gate is None or not self.gate.pending:
            return
        standby = await standby_flush(self.session.source)
        if standby.blocked:
            return
        released = self.gate.release(standby.flushed)
        if released is not None:
            self.confirm(released)

    def confirm(self, lsn: Lsn) -> None:
        """Confirm `lsn` to the server; this is also a standby status update."""
        self.session.stream.confirm(lsn)
        self._last_status = time.monotonic()

    def send_status(self, *, unless_recent: bool = False) -> None:
        if unless_recent and time.monotonic() - self._last_status < STATUS_INTERVAL:
            return
        self.session.stream.send_status()
        self._last_status = time.monotonic()

    def publish_positions(self) -> None:
        commit_times = [batch.oldest_commit_time for batch in self.in_flight]
        commit_times.append(self.buffer.oldest_commit_time)
        stream = self.session.stream
        self.observer.positions(self.buffer.rows, self.server_lsn, stream.confirmed, commit_times)

    async def wait_any(self, event: asyncio.Event, timeout: float) -> None:
        """Until `event` or stop is set, or `timeout` seconds passed."""
        stop = asyncio.ensure_future(self.stop.wait())
        other = asyncio.ensure_future(event.wait())
        await asyncio.wait({stop, other}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        other.cancel()
