"""The in-process buffer between the stream and the embed/sink path.

Committed transactions go in whole; the buffer keeps only the last state of each
(table, source_id), so a row edited ten times before a flush is embedded once. It is bounded by
rows and bytes: when it is full the reader stops reading (the server keeps the WAL) instead of
the heap growing. A drain says which position it covers: a transaction boundary, or a point
inside a transaction too large for the buffer, which arrives in parts
(`cdc.replication.transactions`, `cdc.replication.positions`).

Each table may set how long its changes may wait (`max_latency`): `flush_decision` says when to
drain everything (the table holding back the checkpoint is due, or the buffer is full) and when
to drain only the tables that are due (`drain_tables`): a partial drain, which covers no LSN,
so the checkpoint waits for the next full one. Pure: the caller passes the clock.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from cdc.pipeline.toast import fill_from_previous
from cdc.replication.changes import RowChange, TableTruncate, Transaction
from cdc.replication.lsn import Lsn
from cdc.replication.positions import Position


@dataclass(slots=True)
class Batch:
    """Everything drained at once: apply truncates first, then the row changes.

    A `complete` batch holds every change up to `position`, so applying it lets the
    checkpoint move there; a partial one (some tables only) moves nothing.
    """

    truncated: dict[str, TableTruncate]
    rows: list[RowChange]
    position: Position
    transactions: int
    oldest_commit_time: int | None
    complete: bool = True


@dataclass(slots=True)
class _Pending:
    """When a table's oldest change still here arrived, and when it was committed."""

    since: float
    oldest_commit_time: int


@dataclass(frozen=True, slots=True)
class FlushDecision:
    """Drain everything now, or the `tables` that are due (if any); else look again in `wait`
    seconds (or when something is added). `tables` lists every due table either way."""

    drain_all: bool = False
    tables: tuple[str, ...] = ()
    wait: float = 0.0


def _deadline(since: float, latency: float, idle_latency: float, quiet_at: float | None) -> float:
    """When a table's oldest change here is due: after its latency, or once the stream is
    quiet if its latency is no longer than `idle_latency`."""
    deadline = since + latency
    if quiet_at is not None and latency <= idle_latency:
        return min(deadline, quiet_at)
    return deadline


@dataclass(slots=True)
class ChangeBuffer:
    max_rows: int
    max_bytes: int
    # The position covered once everything added so far is applied.
    position: Position = field(default_factory=lambda: Position(Lsn(0)))
    _rows: dict[tuple[str, str], RowChange] = field(default_factory=dict)
    _truncated: dict[str, TableTruncate] = field(default_factory=dict)
    _bytes: int = 0
    _transactions: int = 0
    _first_added_at: float | None = None
    _pending: dict[str, _Pending] = field(default_factory=dict)

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
    def room(self) -> int:
        """Rows that may still be added before the buffer is full (at least 1)."""
        if self._bytes >= self.max_bytes:
            return 1
        return max(1, self.max_rows - len(self._rows))

    @property
    def oldest_commit_time(self) -> int | None:
        """Commit time of the oldest change still here."""
        times = [pending.oldest_commit_time for pending in self._pending.values()]
        return min(times) if times else None

    def age(self, now: float) -> float:
        """Seconds since the oldest transaction still here was added."""
        return 0.0 if self._first_added_at is None else now - self._first_added_at

    def add(self, transaction: Transaction, now: float) -> None:
        """Add a committed transaction, or a part of one; it may overfill the buffer (the
        caller hands on parts no larger than `room`)."""
        for change in transaction.changes:
            if isinstance(change, TableTruncate):
                self._truncate(change)
            else:
                self._put(change)
            if change.table not in self._pending:
                self._pending[change.table] = _Pending(now, transaction.commit_time)
        if transaction.through is not None:
            self.position = self.position.within(transaction.commit_lsn, transaction.through)
        else:
            self.position = self.position.after(transaction.end_lsn)
        self._transactions += 1
        if self._first_added_at is None:
            self._first_added_at = now

    def flush_decision(
        self,
        now: float,
        latency_of: Callable[[str], float],
        idle_latency: float,
        quiet_at: float | None = None,
    ) -> FlushDecision:
        """When to drain, given each table's `latency_of(table)` (seconds a change may wait).

        Everything goes when the buffer is full or the table with the oldest change is due:
        that table holds the checkpoint back, and flushing the others early costs nothing.
        Tables due before it go alone. Transactions that changed no configured row (they still
        move the checkpoint) wait `idle_latency`. From `quiet_at` on (the stream went quiet,
        `cdc.pipeline.quiet`), tables that wait no longer than `idle_latency` are due: no
        company is coming; a table whose own latency is longer asked to batch, and waits it.
        """
        if self.empty:
            return FlushDecision(wait=math.inf)
        if not self._pending:
            wait = idle_latency - self.age(now)
            return FlushDecision(drain_all=self.full or wait <= 0, wait=wait)
        deadlines = {
            t: _deadline(p.since, latency_of(t), idle_latency, quiet_at)
            for t, p in self._pending.items()
        }
        due = tuple(t for t, deadline in deadlines.items() if deadline <= now)
        oldest = min(self._pending, key=lambda t: self._pending[t].since)
        return FlushDecision(
            drain_all=self.full or deadlines[oldest] <= now,
            tables=due,
            wait=min(deadlines.values()) - now,
        )

    def pending_rows(self) -> Counter[str]:
        """Rows waiting, per table (one pass over the buffer)."""
        return Counter(table for table, _ in self._rows)

    def drain(self) -> Batch:
        batch = Batch(
            truncated=self._truncated,
            rows=list(self._rows.values()),
            position=self.position,
            transactions=self._transactions,
            oldest_commit_time=self.oldest_commit_time,
        )
        self._rows = {}
        self._truncated = {}
        self._bytes = 0
        self._transactions = 0
        self._first_added_at = None
        self._pending = {}
        return batch

    def drain_tables(self, tables: Collection[str]) -> Batch:
        """The changes of `tables` only: a partial batch that covers no LSN."""
        rows = [change for key, change in self._rows.items() if key[0] in tables]
        for change in rows:
            del self._rows[(change.table, change.source_id)]
            self._bytes -= change.size
        truncated = {t: self._truncated.pop(t) for t in tables if t in self._truncated}
        drained = [self._pending.pop(t) for t in tables if t in self._pending]
        return Batch(
            truncated=truncated,
            rows=rows,
            position=self.position,
            transactions=0,
            oldest_commit_time=min((p.oldest_commit_time for p in drained), default=None),
            complete=False,
        )

    def _put(self, change: RowChange) -> None:
        key = (change.table, change.source_id)
        previous = self._rows.pop(key, None)
        if previous is not None:
            self._bytes -= previous.size
            if not change.is_delete and not previous.is_delete and change.has_unchanged_toast():
                fill_from_previous(change, previous)
                change.resize()
        # Re-inserting moves the key to the end: rows drain in the order of their last change.
        self._rows[key] = change
        self._bytes += change.size

    def _truncate(self, truncate: TableTruncate) -> None:
        # Changes before the truncate are void; those after it stay (they are added later).
        for key in [key for key in self._rows if key[0] == truncate.table]:
            self._bytes -= self._rows.pop(key).size
        self._truncated[truncate.table] = truncate
