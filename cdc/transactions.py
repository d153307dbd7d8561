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
    MARK_PREFIX,
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
    LogicalMessage,
    Message,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)


@dataclass(slots=True)
class _Open:
    xid: int
    changes: list[Change] = field(default_factory=list)
    # For streamed transactions: the (sub)transaction xid of each change, so a rolled-back
    # savepoint's changes can be dropped.
    subxids: list[int | None] = field(default_factory=list)
    marks: list[bytes] = field(default_factory=list)


class TransactionAssembler:
    """Feeds on decoded messages; `feed` returns a `Transaction` when one commits."""

    def __init__(
        self,
        tables: Mapping[str, TableConfig],
        keys: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._tables = tables
        # Primary key columns per table, from the catalog; else the relation's key flags.
        self._keys = keys or {}
        self._shapes: dict[int, TableShape | None] = {}
        self._plain: _Open | None = None
        self._streamed: dict[int, _Open] = {}
        self._current_stream: _Open | None = None

    @property
    def idle(self) -> bool:
        """No transaction is open: everything received so far has been handed on."""
        return self._plain is None and not self._streamed

    def feed(self, message: Message) -> Transaction | None:
        if isinstance(message, Update | Insert | Delete | Truncate):
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
        elif isinstance(message, LogicalMessage) and message.prefix == MARK_PREFIX:
            self._add_mark(message)
        # Origin, Type, logical messages and two-phase messages carry nothing to embed.
        return None

    def _shape(self, relation: Relation) -> TableShape | None:
        name = f"{relation.namespace}.{relation.name}"
        table = self._tables.get(name)
        return None if table is None else shape_for(relation, table, self._keys.get(name))

    def _add_change(self, message: Insert | Update | Delete | Truncate) -> None:
        stream = self._current_stream
        target = stream or self._plain
        if target is None:
            raise ProtocolError(f"{type(message).__name__} arrived outside any transaction")
        if isinstance(message, Truncate):
            changes = self._truncates(message)
        else:
            shape = self._known_shape(message.relation_id)
            if shape is None:
                return
            changes = _row_changes(shape, message)
        target.changes += changes
        if stream is not None:
            target.subxids += [message.xid] * len(changes)

    def _add_mark(self, message: LogicalMessage) -> None:
        target = self._current_stream or self._plain
        if target is not None and message.transactional:
            target.marks.append(message.content)

    def _truncates(self, message: Truncate) -> list[Change]:
        return [
            TableTruncate(shape.table, 0, 0)
            for relation_id in message.relation_ids
            if (shape := self._known_shape(relation_id)) is not None
        ]

    def _known_shape(self, relation_id: int) -> TableShape | None:
        try:
            return self._shapes[relation_id]
        except KeyError:
            raise ProtocolError(
                f"a change for relation {relation_id} arrived before its Relation message"
            ) from None

    def _commit_plain(self, commit: Commit) -> Transaction:
        if self._plain is None:
            raise ProtocolError("Commit arrived without Begin")
        opened, self._plain = self._plain, None
        return _committed(opened, commit.commit_lsn, commit.end_lsn, commit.commit_time)

    def _commit_streamed(self, commit: StreamCommit) -> Transaction:
        # A streamed transaction with no change of ours has nothing kept for it.
        opened = self._streamed.pop(commit.xid, None) or _Open(commit.xid)
        return _committed(opened, commit.commit_lsn, commit.end_lsn, commit.commit_time)

    def _abort_streamed(self, abort: StreamAbort) -> None:
        if abort.subxid == abort.xid:
            self._streamed.pop(abort.xid, None)
            return
        opened = self._streamed.get(abort.xid)
        if opened is not None:
            kept = [
                (x, c)
                for x, c in zip(opened.subxids, opened.changes, strict=True)
                if x != abort.subxid
            ]
            opened.subxids = [x for x, _ in kept]
            opened.changes = [c for _, c in kept]


def _committed(opened: _Open, commit_lsn: int, end_lsn: int, commit_time: int) -> Transaction:
    # Changes learn their commit position only now; stamping them is cheaper than building
    # them here from the messages.
    for change in opened.changes:
        change.commit_lsn = commit_lsn
        change.commit_time = commit_time
    return Transaction(opened.xid, commit_lsn, end_lsn, commit_time, opened.changes, opened.marks)


def _row_changes(shape: TableShape, message: Insert | Update | Delete) -> list[Change]:
    if isinstance(message, Update):
        change = upsert_change(shape, message.new, "update", 0, 0)
        if message.old is not None:
            old_key = shape.key_of(message.old)
            if old_key != change.key:
                # The primary key changed: the old key's vectors must go.
                return [delete_change(shape, old_key, 0, 0), change]
        return [change]
    if isinstance(message, Insert):
        return [upsert_change(shape, message.new, "insert", 0, 0)]
    return [delete_change(shape, shape.key_of(message.old), 0, 0)]
