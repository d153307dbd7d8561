"""The sink of one connection, composed: the writer, the state store, the read queries.

`Sink.connect` registers pgvector on the connection and builds the three parts over the same
session, so a write, the checkpoint it saves and the reads before it see one database state.
"""

from __future__ import annotations

from pgvector.psycopg import register_vector_async

from cdc.config import Settings
from cdc.db import Conn
from cdc.sink.progress import ProgressStore
from cdc.sink.reads import SinkReads
from cdc.sink.schema import SinkNames
from cdc.sink.state import StateStore
from cdc.sink.targets import Targets
from cdc.sink.writer import SinkWriter


class Sink:
    """The sink parts on one connection; `targets` redirects source tables (a rebuild)."""

    def __init__(
        self, conn: Conn, settings: Settings, targets: dict[str, tuple[str, str]] | None = None
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
            lock_name=f"wal2vec writer {settings.sink.schema_} {slot}",
        )

    @classmethod
    async def connect(
        cls, conn: Conn, settings: Settings, targets: dict[str, tuple[str, str]] | None = None
    ) -> Sink:
        await register_vector_async(conn)
        sink = cls(conn, settings, targets)
        sink.writer.dead_letters_present = await sink.reads.dead_letter_count() > 0
        return sink

    async def sibling(self, conn: Conn) -> Sink:
        """A sink like this one (same tables) on another connection."""
        return await Sink.connect(conn, self.settings, dict(self.targets.mapping))
