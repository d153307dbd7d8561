"""The sink of one connection, composed: the writer, the state store, the read queries.

`Sink.connect` registers pgvector on the connection and builds the three parts over the same
session, so a write, the checkpoint it saves and the reads before it see one database state.
"""

from __future__ import annotations

from pgvector.psycopg import register_vector_async

from cdc.config import Settings
from cdc.db import Conn
from cdc.replication.lsn import Lsn
from cdc.replication.positions import Position, WriterPositions
from cdc.sink.fence import Fence, writer_lock_name
from cdc.sink.progress import ProgressStore
from cdc.sink.reads import SinkReads
from cdc.sink.schema import SinkNames
from cdc.sink.state import StateStore
from cdc.sink.targets import Targets
from cdc.sink.writer import SinkWriter


class Sink:
    """The sink parts on one connection; `targets` redirects source tables (a rebuild)."""

    def __init__(
        self,
        conn: Conn,
        settings: Settings,
        targets: dict[str, tuple[str, str]] | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.connection = conn
        self.settings = settings
        self.names = SinkNames.of(settings)
        self.targets = Targets(targets) if targets is not None else Targets.of(settings)
        slot = settings.source.slot
        self.state = StateStore(conn, settings)
        self.progress = ProgressStore(conn, self.names, slot)
        self.reads = SinkReads(conn, self.names, self.targets)
        self.writer = SinkWriter(
            conn,
            self.names,
            self.targets,
            self.state,
            self.progress,
            settings.embedding.model,
            lock_name=writer_lock_name(settings.sink.schema_, slot),
            fence=fence,
        )
        self.fence = fence

    @classmethod
    async def connect(
        cls,
        conn: Conn,
        settings: Settings,
        targets: dict[str, tuple[str, str]] | None = None,
        fence: Fence | None = None,
    ) -> Sink:
        await register_vector_async(conn)
        sink = cls(conn, settings, targets, fence)
        sink.writer.dead_letters_present = await sink.reads.dead_letter_count() > 0
        return sink

    async def sibling(self, conn: Conn) -> Sink:
        """A sink like this one (same tables, same term) on another connection."""
        return await Sink.connect(conn, self.settings, dict(self.targets.mapping), self.fence)

    async def mark_snapshot(self, *, done: bool, checkpoint: Lsn | None) -> None:
        """`StateStore.mark_snapshot`, in the leader's term like every other write."""
        async with self.writer.fenced():
            await self.state.mark_snapshot(done=done, checkpoint=checkpoint)

    async def use_writers(self, position: Position, stored: WriterPositions | None) -> None:
        """`StateStore.use_writers`, in the leader's term like every other write."""
        async with self.writer.fenced():
            await self.state.use_writers(position, stored)
