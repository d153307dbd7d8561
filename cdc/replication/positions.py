"""Where the stream stands: what the sink holds, what is skipped on restart, what may be confirmed.

Pure rules, no I/O, so the invariants are proven without a server:

1. The slot is confirmed only up to a position whose changes the sink has committed
   (`applied`), never past a change it lacks.
2. A transaction the sink already holds is skipped when the slot sends it again after a
   restart (`already_applied`), and so are the changes of a transaction applied in part
   (`changes_to_skip`).
3. When nothing received is waiting to be applied, a keepalive's position may be confirmed
   (`keepalive`), so a quiet publication does not make the server keep WAL forever.

A transaction too large for the buffer is applied in parts, each with a checkpoint inside it:
the commit LSN of the transaction and how many of its changes the sink holds. The slot can only
be confirmed at transaction boundaries (a confirmed position inside a transaction would make the
server skip the rest of it), so confirmation stays at the last transaction applied whole while
the checkpoint moves on inside the large one.

With parallel sink writers (`sink.writers`, `cdc.partitions`) each writer commits its share of
a batch with a position of its own (`WriterPositions`). The slot is confirmed only once all of
them committed the batch, and a restart resumes from the lowest; between the lowest and the
highest, each row change is skipped when its own writer holds it (`held_by_writer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cdc.partitions import partition_of
from cdc.replication.changes import Change, RowChange
from cdc.replication.lsn import Lsn


@dataclass(frozen=True, slots=True)
class Position:
    """The sink holds every transaction that ended at or before `lsn` and, when
    `partial_commit` is set, the first `partial_changes` changes of the transaction that
    committed at `partial_commit` (a row change or a truncate message each)."""

    lsn: Lsn
    partial_commit: Lsn | None = None
    partial_changes: int = 0

    @property
    def is_partial(self) -> bool:
        return self.partial_commit is not None

    def within(self, commit_lsn: Lsn, changes: int) -> Position:
        """This position, moved `changes` changes into the transaction committed at `commit_lsn`."""
        return Position(self.lsn, Lsn(commit_lsn), changes)

    def after(self, end_lsn: Lsn) -> Position:
        """This position, moved past a transaction applied whole that ended at `end_lsn`."""
        return Position(Lsn(max(self.lsn, end_lsn)))

    def __str__(self) -> str:
        if self.partial_commit is None:
            return str(self.lsn)
        return f"{self.lsn} + {self.partial_changes} changes of {self.partial_commit}"

    @property
    def order(self) -> tuple[int, int, int]:
        """Sorts the positions of one stream: a transaction's parts come after the boundary
        before it and before the one after it (the end of a transaction is past its commit)."""
        return (self.lsn, self.partial_commit or 0, self.partial_changes)

    @property
    def reach(self) -> Lsn:
        """The last commit LSN this position holds anything of."""
        return self.partial_commit if self.partial_commit is not None else self.lsn

    def holds(self, commit_lsn: Lsn, index: int) -> bool:
        """Whether the sink holds change number `index` (from 1; 0 when not counted: a
        streamed transaction, never applied in part) of the transaction at `commit_lsn`."""
        if commit_lsn <= self.lsn:
            return True
        return self.partial_commit == commit_lsn and 0 < index <= self.partial_changes


def lowest(positions: Sequence[Position]) -> Position:
    return min(positions, key=lambda position: position.order)


# Which of a transaction's row changes a writer already holds: (change number, change) -> bool.
HeldFilter = Callable[[int, RowChange], bool]


@dataclass(frozen=True, slots=True)
class WriterPositions:
    """Where each parallel sink writer stands, as the sink stored it: writer i applied the
    rows of partition i of `len(positions)` (`cdc.partitions`) up to `positions[i]`."""

    positions: tuple[Position, ...]

    @property
    def lowest(self) -> Position:
        """Where the sink as a whole stands: every writer holds everything up to here."""
        return lowest(self.positions)

    @property
    def even(self) -> bool:
        return len(set(self.positions)) <= 1

    def moves(self, writer: int, position: Position) -> bool:
        """Whether `writer` should save `position`: never behind where it stood. While the
        others catch up with it, its shares are empty (it holds them) and its position
        stays, so a second crash still finds it where it was."""
        return position.order > self.positions[writer].order

    def held_in(self, commit_lsn: Lsn) -> HeldFilter | None:
        """For the transaction at `commit_lsn`: which row changes their writer holds. None
        when no writer holds any (past every position, or all writers stand together)."""
        if self.even or all(commit_lsn > p.reach for p in self.positions):
            return None
        positions, writers = self.positions, len(self.positions)

        def held(index: int, change: RowChange) -> bool:
            writer = partition_of(change.table, change.source_id, writers)
            return positions[writer].holds(commit_lsn, index)

        return held


def held_by_writer(held: HeldFilter | None, index: int, changes: list[Change]) -> list[Change]:
    """`changes` (all from change number `index`) less the row changes `held` says are in
    the sink. A truncate is never held by one writer alone: batches with one are applied by
    all writers together."""
    if held is None:
        return changes
    return [c for c in changes if not (isinstance(c, RowChange) and held(index, c))]


class PositionRules:
    """The position of the sink and of the slot, moved by events; never backwards."""

    def __init__(self, checkpoint: Position, writers: WriterPositions | None = None) -> None:
        self.checkpoint = checkpoint
        self.confirmable = checkpoint.lsn
        # The parallel writers' positions at the start, when they differ (after a crash).
        self._writers = writers if writers is not None and not writers.even else None

    def already_applied(self, commit_lsn: Lsn, end_lsn: Lsn | None) -> bool:
        """Whether the sink holds all of this transaction (`end_lsn` None: a part of one whose
        end is not known yet). The slot may resend what was not confirmed before a restart."""
        if end_lsn is not None:
            return end_lsn <= self.checkpoint.lsn
        return commit_lsn <= self.checkpoint.lsn

    def changes_to_skip(self, commit_lsn: Lsn) -> int:
        """How many leading changes of the transaction committed at `commit_lsn` the sink
        already holds (0 unless it was applied in part before a restart)."""
        checkpoint = self.checkpoint
        if checkpoint.partial_commit is not None and checkpoint.partial_commit == commit_lsn:
            return checkpoint.partial_changes
        return 0

    def held_in(self, commit_lsn: Lsn) -> HeldFilter | None:
        """Which row changes of the transaction at `commit_lsn` one writer already holds
        beyond the checkpoint (None: none; see `WriterPositions.held_in`)."""
        if self._writers is None:
            return None
        return self._writers.held_in(commit_lsn)

    def applied(self, position: Position) -> Lsn:
        """The sink committed everything up to `position`: it is the new checkpoint. Returns
        the LSN that may now be confirmed: the last transaction boundary it covers."""
        self.checkpoint = position
        self.confirmable = Lsn(max(self.confirmable, position.lsn))
        return self.confirmable

    def keepalive(self, wal_end: Lsn, nothing_pending: bool) -> Lsn | None:
        """The LSN to confirm on a keepalive: its position when nothing received is waiting
        to be applied (no open transaction, an empty buffer, no batch in flight), else None."""
        if not nothing_pending:
            return None
        self.confirmable = Lsn(max(self.confirmable, wal_end))
        return self.confirmable


@dataclass(slots=True)
class StandbyGate:
    """With a failover slot: a position is confirmed only once the standby has the sink
    commit that applied it.

    The standby's copy of the slot follows the primary's confirmed position as far as the
    standby has WAL. When the sink lives on the source server, its commit for a change is
    WAL written after the change: confirming the change before the standby has that commit
    would let a promotion find a slot past a change whose vector was lost with the old
    primary, never to be sent again. So each confirmable position waits here with the
    source's WAL position after its sink commit, until the standby has flushed that far.
    """

    # (position to confirm, source WAL position the standby must have first), in order.
    held: list[tuple[Lsn, Lsn]] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return bool(self.held)

    def hold(self, confirm: Lsn, needs: Lsn) -> None:
        self.held.append((confirm, needs))

    def release(self, standby_flush: Lsn | None) -> Lsn | None:
        """The furthest held position the standby now covers (`standby_flush` None: no
        standby to wait for, all of them); None when none is."""
        released = None
        while self.held and (standby_flush is None or self.held[0][1] <= standby_flush):
            released = self.held.pop(0)[0]
        return released
