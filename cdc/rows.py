"""A source row's current state: the unit every stage after the buffer works in.

The streamer, the snapshot, resync, verify and dead-letter retries all turn what they read into
`RowState`s; the applier plans and embeds their chunks (`ChunkWork`); the sink stores them under
`SourceKey` and says what it holds (`StoredChunk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdc.content import Chunk
from cdc.replication.lsn import Lsn

SourceKey = tuple[str, str]  # (source_table, source_id)
Metadata = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RowState:
    """A source row's current state: its content ("" when it has none) or its deletion."""

    source_table: str
    source_id: str
    content: str
    metadata: Metadata
    lsn: Lsn | None  # commit LSN of the change; None for snapshot reads
    deleted: bool = False

    @property
    def key(self) -> SourceKey:
        return (self.source_table, self.source_id)


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """What the sink holds for one chunk of a row."""

    content_hash: str
    model: str
    # Whether the stored metadata equals the row's current metadata (compared by the sink).
    same_metadata: bool


@dataclass(frozen=True, slots=True)
class ChunkWork:
    """One chunk of a row, to embed or to update."""

    row: RowState
    chunk: Chunk
