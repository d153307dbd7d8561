"""Watermark windows: re-read a table beside the stream without ever applying a stale read.

A per-table resync reads the table in primary-key chunks while changes keep streaming (the
DBLog / Debezium incremental-snapshot technique). For each chunk it commits a low watermark
(a logical message), selects the chunk, then commits a high watermark. The stream delivers
transactions in commit order, so every change committed between the two marks arrives between
them: a row such a change touched may be newer in the stream than in the read, and is dropped
from the chunk. The rest of the chunk is as current as the stream at the high mark, and is
handed on there, in stream order, as if it had been a transaction committed at that point.

The same holds for rows the read found absent (sink ids with no source row): they become
deletes at the high mark unless a change in the window touched them.

Pure logic: no database, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cdc.replication.changes import (
    CHANGE_OVERHEAD_BYTES,
    RowChange,
    TableTruncate,
    Transaction,
    deletion,
    text_size,
)
from cdc.replication.lsn import Lsn
from cdc.sink.progress import ResyncPosition

Edge = Literal["low", "high"]


def encode_mark(session: str, chunk: int, edge: Edge) -> str:
    return f"{session}:{chunk}:{edge}"


def decode_mark(content: bytes) -> tuple[str, int, Edge] | None:
    try:
        session, chunk, edge = content.decode().split(":")
        if edge not in ("low", "high"):
            return None
        return session, int(chunk), edge  # type: ignore[return-value]
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ReadRow:
    """One row as a chunk read found it: key values, content and metadata in text form."""

    source_id: str
    key: tuple[str, ...]
    content: tuple[str | None, ...]
    metadata: tuple[str | None, ...]


@dataclass(slots=True)
class ChunkRead:
    """What one watermarked read found, and the resync position that applying it reaches."""

    chunk: int
    table: str
    present: list[ReadRow]
    absent: list[tuple[str, tuple[str, ...]]]  # (source_id, key)
    position: ResyncPosition

    def changes(self, touched: set[str], commit_lsn: Lsn, commit_time: int) -> list[RowChange]:
        """The read as row changes at the high mark, leaving out rows the window touched."""
        out = [
            RowChange(
                table=self.table,
                source_id=row.source_id,
                key=row.key,
                op="update",
                content=row.content,
                metadata=row.metadata,
                commit_lsn=commit_lsn,
                commit_time=commit_time,
                size=CHANGE_OVERHEAD_BYTES
                + len(row.source_id)
                + text_size(row.content)
                + text_size(row.metadata),
            )
            for row in self.present
            if row.source_id not in touched
        ]
        out += [
            deletion(self.table, source_id, key, commit_lsn, commit_time)
            for source_id, key in self.absent
            if source_id not in touched
        ]
        return out


@dataclass(slots=True)
class _Window:
    table: str
    touched: set[str] = field(default_factory=set)
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Landed:
    """A chunk read whose changes now sit in the stream at its high mark."""

    read: ChunkRead
    changes: list[RowChange]


class Windows:
    """Open watermark windows of this session, fed every committed transaction in order."""

    def __init__(self, session: str) -> None:
        self.session = session
        self._reads: dict[int, ChunkRead] = {}
        self._open: dict[int, _Window] = {}
        self._tables: dict[int, str] = {}

    @property
    def active(self) -> bool:
        return bool(self._open)

    def opening(self, chunk: int, table: str) -> None:
        """A low mark for `chunk` of `table` is about to be committed."""
        self._tables[chunk] = table

    def expect(self, read: ChunkRead) -> None:
        """The read is done; its high mark is about to be committed."""
        self._reads[read.chunk] = read

    def abandon(self, chunk: int) -> None:
        self._reads.pop(chunk, None)
        self._open.pop(chunk, None)
        self._tables.pop(chunk, None)

    def observe(self, transaction: Transaction) -> list[Landed]:
        """Note what `transaction` touched inside open windows; close the windows whose high
        mark it carries and return their reads, minus what the windows touched."""
        if self._open:
            self._note_changes(transaction)
        landed = []
        for content in transaction.marks:
            mark = decode_mark(content)
            if mark is None or mark[0] != self.session:
                continue  # another session's marks, replayed after a restart
            _, chunk, edge = mark
            if edge == "low":
                table = self._tables.get(chunk)
                if table is not None:
                    self._open[chunk] = _Window(table)
            else:
                done = self._close(chunk, transaction)
                if done is not None:
                    landed.append(done)
        return landed

    def _note_changes(self, transaction: Transaction) -> None:
        for window in self._open.values():
            for change in transaction.changes:
                if change.table != window.table:
                    continue
                if isinstance(change, TableTruncate):
                    window.truncated = True
                else:
                    window.touched.add(change.source_id)

    def _close(self, chunk: int, transaction: Transaction) -> Landed | None:
        window = self._open.pop(chunk, None)
        read = self._reads.pop(chunk, None)
        self._tables.pop(chunk, None)
        if window is None or read is None:
            return None
        if window.truncated:
            # The table was emptied inside the window: the read is void, the truncate rules.
            return Landed(read, [])
        changes = read.changes(window.touched, transaction.commit_lsn, transaction.commit_time)
        return Landed(read, changes)
