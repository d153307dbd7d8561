"""Transaction assembly: decoded pgoutput messages in, committed transactions out.

A pure state machine. Plain transactions run Begin..Commit; streamed ones (large transactions
the server sends before they commit) arrive in Stream Start..Stream Stop blocks, possibly
interleaved, and end with Stream Commit or Stream Abort. Aborted work, of a whole transaction or
of a rolled-back savepoint, vanishes here and never reaches the buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cdc.changes import (
    Change,
    TableShape,
    TableTruncate,
    Transaction,
    delete_change,
    shape_for,
    upsert_change,
)
from cdc.config import TableConfig
from cdc.errors import ProtocolError
from cdc.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)

# A change as received, bound to the table shape in force when it arrived (a later Relation
# message may change the shape before the transaction commits).
PendingChange = (
    tuple[TableShape, Insert | Update | Delete] | tuple[tuple[TableShape, ...], Truncate]
)


@dataclass(slots=True)
class _Open:
    xid: int
    # (subtransaction xid or None, change); the xid lets a rolled-back savepoint be dropped.
    changes: list[tuple[int | None, PendingChange]] = field(default_factory=list)


class TransactionAssembler:
    """Feeds on decoded messages; `feed` returns a `Transaction` when one commits."""

    def __init__(self, tables: Mapping[str, TableConfig]) -> None:
        self._tables = tables
        self._shapes: dict[int, TableShape | None] = {}
        self._plain: _Open | None = None
        self._streamed: dict[int, _Open] = {}
        self._current_stream: _Open | None = None

    @property
    def idle(self) -> bool:
        """No transaction is open: everything received so far has been handed on."""
        return self._plain is None and not self._streamed

    def feed(self, message: Message) -> Transaction | None:
        if isinstance(message, Insert | Update | Delete | Truncate):
            self._add_change(message)
            return None
        if isinstance(message, Begin):
            self._plain = _Open(message.xid)
        elif isinstance(message, Commit):
            return self._commit_plain(message)
        elif isinstance(message, Relation):
            self._shapes[message.relation_id] = self._shape(message)
        elif isinstance(message, StreamStart):
            self._current_stream = self._streamed.setdefault(message.xid, _Open(message.xid))
        elif isinstance(message, StreamStop):
            self._current_stream = None
        elif isinstance(message, StreamCommit):
            return self._commit_streamed(message)
        elif isinstance(message, StreamAbort):
            self._abort_streamed(message)
        # Origin, Type, logical messages and two-phase messages carry nothing to embed.
        return None

    def _shape(self, relation: Relation) -> TableShape | None:
        table = self._tables.get(f"{relation.namespace}.{relation.name}")
        return None if table is None else shape_for(relation, table)

    def _add_change(self, message: Insert | Update | Delete | Truncate) -> None:
        target = self._current_stream or self._plain
        if target is None:
            raise ProtocolError(f"{type(message).__name__} arrived outside any transaction")
        pending = self._pending(message)
        if pending is not None:
            target.changes.append((message.xid, pending))

    def _pending(self, message: Insert | Update | Delete | Truncate) -> PendingChange | None:
        if isinstance(message, Truncate):
            shapes = tuple(
                shape
                for relation_id in message.relation_ids
                if (shape := self._known_shape(relation_id)) is not None
            )
            return (shapes, message) if shapes else None
        shape = self._known_shape(message.relation_id)
        return None if shape is None else (shape, message)

    def _known_shape(self, relation_id: int) -> TableShape | None:
        try:
            return self._shapes[relation_id]
        except KeyError:
            raise ProtocolError(
                f"a change for relation {relation_id} arrived before its Relation message"
            ) from None

    def _commit_plain(self, commit: Commit) -> Transaction | None:
        if self._plain is None:
            raise ProtocolError("Commit arrived without Begin")
        opened, self._plain = self._plain, None
        return _build(opened, commit.commit_lsn, commit.end_lsn, commit.commit_time)

    def _commit_streamed(self, commit: StreamCommit) -> Transaction | None:
        opened = self._streamed.pop(commit.xid, None)
        if opened is None:
            # A streamed transaction with no change of ours: nothing was kept for it.
            opened = _Open(commit.xid)
        return _build(opened, commit.commit_lsn, commit.end_lsn, commit.commit_time)

    def _abort_streamed(self, abort: StreamAbort) -> None:
        if abort.subxid == abort.xid:
            self._streamed.pop(abort.xid, None)
            return
        opened = self._streamed.get(abort.xid)
        if opened is not None:
            opened.changes = [item for item in opened.changes if item[0] != abort.subxid]


def _build(opened: _Open, commit_lsn: int, end_lsn: int, commit_time: int) -> Transaction:
    changes: list[Change] = []
    for _, pending in opened.changes:
        changes.extend(_to_changes(pending, commit_lsn, commit_time))
    return Transaction(opened.xid, commit_lsn, end_lsn, commit_time, changes)


def _to_changes(pending: PendingChange, lsn: int, time: int) -> list[Change]:
    target, message = pending
    if isinstance(message, Truncate):
        assert isinstance(target, tuple)
        return [TableTruncate(shape.table, lsn, time) for shape in target]
    assert isinstance(target, TableShape)
    shape = target
    if isinstance(message, Insert):
        return [upsert_change(shape, message.new, "insert", lsn, time)]
    if isinstance(message, Delete):
        return [delete_change(shape, shape.key_of(message.old), lsn, time)]
    change = upsert_change(shape, message.new, "update", lsn, time)
    if message.old is not None:
        old_key = shape.key_of(message.old)
        if old_key != change.key:
            # The primary key changed: the old key's vectors must go.
            return [delete_change(shape, old_key, lsn, time), change]
    return [change]
