"""The reading half of the streamer: frames -> decode -> transactions -> buffer.

The reader drains every frame the socket holds per wake-up, decodes and assembles them
synchronously (no task hop per message) and stops reading while the buffer is full: the
server keeps the WAL, the heap does not grow (invariant 5). When it has read everything the
server sent at a transaction boundary, it tells the flow the stream went quiet
(`cdc.pipeline.quiet`). Keepalives confirm the server's position when nothing is pending
(invariant 6, `PositionRules.keepalive`).
"""

from __future__ import annotations

import asyncio
import time

from cdc.pipeline.flow import STATUS_INTERVAL, Flow
from cdc.replication.changes import Transaction
from cdc.replication.frames import (
    XLOGDATA_HEADER,
    Keepalive,
    is_xlogdata,
    parse_frame,
    xlogdata_wal_end,
)
from cdc.replication.lsn import Lsn
from cdc.replication.stream import MAX_FRAMES_PER_READ
from cdc.replication.transactions import TransactionAssembler


class Reader:
    """Reads the slot into the flow's buffer until stop is set."""

    def __init__(self, flow: Flow) -> None:
        self._flow = flow
        tables = flow.session.tables
        self.assembler = TransactionAssembler(
            {name: table.config for name, table in tables.items()},
            {name: table.key_names for name, table in tables.items()},
            changes_to_skip=flow.positions.changes_to_skip,
            held_in=flow.positions.held_in,
        )
        self.assembler.part_limit = flow.buffer.room
        self._feed_frame = flow.session.stream.plugin.feeder(self.assembler)
        # Frames read but not yet decoded: the buffer filled up while decoding them.
        self._unread: list[memoryview] = []

    def room_changed(self) -> None:
        """The flusher drained the buffer: a large transaction may come in bigger parts."""
        self.assembler.part_limit = self._flow.buffer.room

    async def run(self) -> None:
        flow = self._flow
        stream = flow.session.stream
        while not flow.stop.is_set():
            if flow.buffer.full:
                flow.space.clear()
                await flow.wait_any(flow.space, STATUS_INTERVAL)
                self._heartbeat()
                continue
            fresh = not self._unread
            frames = stream.read_frames() if fresh else self._unread
            self._unread = self._on_frames(frames)
            # Published before waiting, so what was just read shows in /metrics at once.
            self._heartbeat()
            if fresh and not self._unread and len(frames) < MAX_FRAMES_PER_READ:
                self._drained()
                await stream.wait_readable(min(STATUS_INTERVAL, 1.0))
            else:
                await asyncio.sleep(0)  # libpq may hold more than the socket shows
        flow.added.set()

    def _on_frames(self, frames: list[memoryview]) -> list[memoryview]:
        """Decode and assemble a batch of frames: the hot path, no await, no task hop.
        Returns the frames left undecoded because the buffer filled up."""
        flow = self._flow
        feed_frame = self._feed_frame
        last_data: memoryview | None = None
        rest: list[memoryview] = []
        for index, data in enumerate(frames):
            if is_xlogdata(data):
                last_data = data
                transaction = feed_frame(data[XLOGDATA_HEADER:])
                if transaction is not None:
                    self._accept(transaction)
                    if flow.buffer.full:
                        rest = frames[index + 1 :]
                        break
            else:
                frame = parse_frame(data)
                assert isinstance(frame, Keepalive)
                flow.server_lsn = Lsn(max(flow.server_lsn, frame.wal_end))
                self._on_keepalive(frame)
        if last_data is not None:
            flow.server_lsn = Lsn(max(flow.server_lsn, xlogdata_wal_end(last_data)))
            flow.quiet.heard()
        return rest

    def _drained(self) -> None:
        """Everything the server sent is read: at a transaction boundary, the stream is quiet
        and what is buffered has no company coming (the flusher looks again)."""
        flow = self._flow
        if flow.quiet.drained(self.assembler.idle, time.monotonic()):
            flow.added.set()

    def _accept(self, transaction: Transaction) -> None:
        flow = self._flow
        end = None if transaction.is_part else transaction.end_lsn
        if flow.positions.already_applied(transaction.commit_lsn, end):
            return  # applied before a restart; the server may send it again
        flow.observer.count(transaction)
        windows = flow.session.resyncs.windows
        if transaction.marks or windows.active:
            for landed in windows.observe(transaction):
                # The resync's read enters the stream here, at its high watermark.
                transaction.changes.extend(landed.changes)
                flow.landing.append(landed.read)
        flow.buffer.add(transaction, time.monotonic())
        self.assembler.part_limit = flow.buffer.room
        flow.added.set()

    def _on_keepalive(self, keepalive: Keepalive) -> None:
        # Nothing received is unapplied: the server's position is safe to confirm, so a quiet
        # publication does not make the server keep WAL for us.
        flow = self._flow
        nothing_pending = (
            self.assembler.idle
            and flow.buffer.empty
            and not flow.in_flight
            and not flow.confirms_held
        )
        confirm = flow.positions.keepalive(keepalive.wal_end, nothing_pending)
        if confirm is not None:
            flow.confirm(confirm)
        elif keepalive.reply_requested:
            flow.send_status()

    def _heartbeat(self) -> None:
        self._flow.observer.beat()
        self._flow.send_status(unless_recent=True)
        self._flow.publish_positions()
