"""A source row's current state: the unit every stage after the buffer works in.

The streamer, the snapshot, resync, verify and dead-letter retries all turn what they read into
`RowState`s; the applier plans and embeds them; the sink stores their chunks under `SourceKey`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
