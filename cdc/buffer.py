"""The in-process buffer between the stream and the embed/sink path.

Committed transactions go in whole; the buffer keeps only the last state of each
(table, source_id), so a row edited ten times before a flush is embedded once. It is bounded by
rows and bytes: when it is full the reader stops reading (the server keeps the WAL) instead of
the heap growing. A drain always ends at a transaction boundary and says which LSN it covers.
Pure: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cdc.changes import RowChange, TableTruncate, Transaction
from cdc.pgoutput import UNCHANGED_TOAST, Value


@dataclass(slots=True)
class Batch:
    """Everything drained at once: apply truncates first, then the row changes."""

    truncated: dict[str, TableTruncate]
    rows: list[RowChange]
    end_lsn: int
    transactions: int
    oldest_commit_time: int | None


@dataclass(slots=True)
class ChangeBuffer:
    max_rows: int
    max_bytes: int
    _rows: dict[tuple[str, str], RowChange] = field(default_factory=dict)
    _truncated: dict[str, TableTruncate] = field(default_factory=dict)
    _bytes: int = 0
    _end_lsn: int = 0
    _transactions: int = 0
    _oldest_commit_time: int | None = None
    _first_added_at: float | None = None

    @property
    def rows(self) -> int:
        return len(self._rows)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def empty(self) -> bool:
        return self._transactions == 0

    @property
    def full(self) -> bool:
        return len(self._rows) >= self.max_rows or self._bytes >= self.max_bytes

    @property
    def end_lsn(self) -> int:
        """The end LSN of the last transaction added (0 when empty)."""
        return self._end_lsn

    @property
    def oldest_commit_time(self) -> int | None:
        """Commit time of the oldest transaction here that changed something."""
        return self._oldest_commit_time

    def age(self, now: float) -> float:
        """Seconds since the oldest transaction still here was added."""
        return 0.0 if self._first_added_at is None else now - self._first_added_at

    def add(self, transaction: Transaction, now: float) -> None:
        """Add a committed transaction whole; it may overfill the buffer, never split it."""
        for change in transaction.changes:
            if isinstance(change, TableTruncate):
                self._truncate(change)
            else:
                self._put(change)
        self._end_lsn = transaction.end_lsn
        self._transactions += 1
        if self._first_added_at is None:
            self._first_added_at = now
        if transaction.changes and self._oldest_commit_time is None:
            self._oldest_commit_time = transaction.commit_time

    def drain(self) -> Batch:
        batch = Batch(
            truncated=self._truncated,
            rows=list(self._rows.values()),
            end_lsn=self._end_lsn,
            transactions=self._transactions,
            oldest_commit_time=self._oldest_commit_time,
        )
        self._rows = {}
        self._truncated = {}
        self._bytes = 0
        self._transactions = 0
        self._oldest_commit_time = None
        self._first_added_at = None
        return batch

    def _put(self, change: RowChange) -> None:
        key = (change.table, change.source_id)
        previous = self._rows.pop(key, None)
        if previous is not None:
            self._bytes -= previous.size
            if not change.is_delete and not previous.is_delete and change.has_unchanged_toast():
                _fill_unchanged(change, previous)
                change.resize()
        # Re-inserting moves the key to the end: rows drain in the order of their last change.
        self._rows[key] = change
        self._bytes += change.size

    def _truncate(self, truncate: TableTruncate) -> None:
        # Changes before the truncate are void; those after it stay (they are added later).
        for key in [key for key in self._rows if key[0] == truncate.table]:
            self._bytes -= self._rows.pop(key).size
        self._truncated[truncate.table] = truncate


def _fill_unchanged(change: RowChange, previous: RowChange) -> None:
    """Take unchanged-TOAST values from the row's previous state when the buffer still has it."""
    change.content = _merge(change.content, previous.content)
    change.metadata = _merge(change.metadata, previous.metadata)


def _merge(
    new: tuple[Value, ...] | None, old: tuple[Value, ...] | None
) -> tuple[Value, ...] | None:
    if new is None or old is None or UNCHANGED_TOAST not in new:
        return new
    return tuple(o if n is UNCHANGED_TOAST else n for n, o in zip(new, old, strict=True))
