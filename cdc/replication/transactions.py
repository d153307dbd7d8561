"""Transaction assembly: decoded messages in, committed transactions out.

A pure state machine. Plain transactions run Begin..Commit; streamed ones (large transactions
the server sends before they commit) arrive in Stream Start..Stream Stop blocks, possibly
interleaved, and end with Stream Commit or Stream Abort. Aborted work, of a whole transaction or
of a rolled-back savepoint, vanishes here and never reaches the buffer.

A plain transaction is sent only once it committed (its Begin carries the commit LSN), so it
can be handed on in parts before its Commit arrives: once it holds `part_limit` changes, `feed`
returns what it has as a part (`Transaction.through`), and memory stays bounded whatever the
transaction's size. After a restart, the changes of a transaction the sink already holds in
part are skipped (`changes_to_skip`), counted the same way; and with parallel sink writers,
the row changes their own writer already holds (`held_in`, `cdc.replication.positions`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cdc.config import TableConfig
from cdc.errors import ProtocolError
from cdc.replication.changes import (
    MARK_PREFIX,
    Change,
    TableShape,
    TableTruncate,
    Transaction,
    delete_change,
    shape_for,
    upsert_change,
)
from cdc.replication.lsn import ZERO, Lsn
from cdc.replication.messages import (
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
from cdc.replication.positions import HeldFilter, held_by_writer


@dataclass(slots=True)
class _Open:
    xid: int
    changes: list[Change] = field(default_factory=list)
    # For streamed transactions: the (sub)transaction xid of each change, so a rolled-back
    # savepoint's changes can be dropped.
    subxids: list[int | None] = field(default_factory=list)
    marks: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class _OpenPlain(_Open):
    """A plain transaction: committed already, so it may be handed on in parts."""

    commit_lsn: Lsn = ZERO
    commit_time: int = 0
    # Change messages received (configured or not; before skipping), and how many of the
    # first ones the sink already holds.
    received: int = 0
    skip: int = 0
    # Which later row changes one of the sink's parallel writers already holds (a restart
    # between their commits); None almost always.
    held: HeldFilter | None = None


def _skip_none(commit_lsn: Lsn) -> int:
    return 0


def _held_none(commit_lsn: Lsn) -> HeldFilter | None:
    return None


class TransactionAssembler:
    """Feeds on decoded messages; `feed` returns a `Transaction` when one commits."""

    def __init__(
        self,
        tables: Mapping[str, TableConfig],
        keys: Mapping[str, tuple[str, ...]] | None = None,
        *,
        changes_to_skip: Callable[[Lsn], int] = _skip_none,
        held_in: Callable[[Lsn], HeldFilter | None] = _held_none,
    ) -> None:
        self._tables = tables
        # Primary key columns per table, from the catalog; else the relation's key flags.
        self._keys = keys or {}
        self._changes_to_skip = changes_to_skip
        self._held_in = held_in
        # A plain transaction holding this many changes is handed on as a part; the caller
        # sets it to the room left in its buffer.
        self.part_limit = 1 << 62
        self._shapes: dict[int, TableShape | None] = {}
        # Configured tables whose Relation named no columns (wal2json truncating a table
        # before any row of it was seen): their names, which is enough to truncate them.
        self._names: dict[int, str] = {}
        self._plain: _OpenPlain | None = None
        self._streamed: dict[int, _Open] = {}
        self._current_stream: _Open | None = None

    @property
    def idle(self) -> bool:
        """No transaction is open: everything received so far has been handed on."""
        return self._plain is None and not self._streamed

    @property
    def open_changes(self) -> int:
        """Changes held for the open plain transaction, not yet handed on."""
        return 0 if self._plain is None else len(self._plain.changes)

    def feed(self, message: Message) -> Transaction | None:
        if isinstance(message, Update | Insert | Delete | Truncate):
            plain = self._plain
            if self._current_stream is None and plain is not None:
                plain.received += 1
                if plain.received <= plain.skip:
                    return None  # in the sink already: applied in part before a restart
            self._add_change(message)
            if plain is not None and len(plain.changes) >= self.part_limit:
                return self.take_part()
            return None
        if isinstance(message, Begin):
            self._plain = _OpenPlain(
                message.xid,
                commit_lsn=message.final_lsn,
                commit_time=message.commit_time,
                skip=self._changes_to_skip(message.final_lsn),
                held=self._held_in(message.final_lsn),
            )
        elif isinstance(message, Commit):
            return self._commit_plain(message)
        elif isinstance(message, Relation):
            self._relation(message)
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

    def take_part(self) -> Transaction | None:
        """What the open plain transaction holds so far, as a part; None if it holds nothing."""
        plain = self._plain
        if plain is None or not (plain.changes or plain.marks):
            return None
        changes, marks = plain.changes, plain.marks
        plain.changes, plain.marks = [], []
        _stamp(changes, plain.commit_lsn, plain.commit_time)
        return Transaction(
            plain.xid, plain.commit_lsn, ZERO, plain.commit_time, changes, marks, plain.received
        )

    def _relation(self, relation: Relation) -> None:
        relation_id = relation.relation_id
        if relation.columns:
            self._shapes[relation_id] = self._shape(relation)
            self._names.pop(relation_id, None)
            return
        # No columns, so no key and no content: only the table's name is known.
        table = self._tables.get(f"{relation.namespace}.{relation.name}")
        if table is None:
            self._shapes[relation_id] = None  # not configured: its changes are dropped
            self._names.pop(relation_id, None)
            return
        self._names[relation_id] = table.table
        self._shapes.pop(relation_id, None)

    def _shape(self, relation: Relation) -> TableShape | None:
        name = f"{relation.namespace}.{relation.name}"
        table = self._tables.get(name)
        if table is None:
            return None
        previous = self._shapes.get(relation.relation_id)
        return shape_for(relation, table, self._keys.get(name), previous)

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
        if stream is None and self._plain is not None and self._plain.held is not None:
            changes = held_by_writer(self._plain.held, self._plain.received, changes)
        target.changes += changes
        if stream is not None:
            target.subxids += [message.xid] * len(changes)

    def _add_mark(self, message: LogicalMessage) -> None:
        target = self._current_stream or self._plain
        if target is not None and message.transactional:
            target.marks.append(message.content)

    def _truncates(self, message: Truncate) -> list[Change]:
        return [
            TableTruncate(table, ZERO, 0)
            for relation_id in message.relation_ids
            if (table := self._truncated_table(relation_id)) is not None
        ]

    def _truncated_table(self, relation_id: int) -> str | None:
        """The configured table a Truncate names (None: not configured)."""
        name = self._names.get(relation_id)
        if name is not None:
            return name
        shape = self._known_shape(relation_id)
        return None if shape is None else shape.table

    def _known_shape(self, relation_id: int) -> TableShape | None:
        try:
            return self._shapes[relation_id]
        except KeyError:
            if relation_id in self._names:
                raise ProtocolError(
                    f"a row change for relation {relation_id} ({self._names[relation_id]})"
                    " arrived, but its Relation message named no columns"
                ) from None
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
        held = self._held_in(commit.commit_lsn)
        if held is not None:
            # Streamed transactions are applied whole, so their changes are not counted.
            opened.changes = held_by_writer(held, 0, opened.changes)
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


def _committed(opened: _Open, commit_lsn: Lsn, end_lsn: Lsn, commit_time: int) -> Transaction:
    _stamp(opened.changes, commit_lsn, commit_time)
    return Transaction(opened.xid, commit_lsn, end_lsn, commit_time, opened.changes, opened.marks)


def _stamp(changes: list[Change], commit_lsn: Lsn, commit_time: int) -> None:
    # Changes learn their commit position only when handed on; stamping them is cheaper than
    # building them here from the messages.
    for change in changes:
        change.commit_lsn = commit_lsn
        change.commit_time = commit_time


def _row_changes(shape: TableShape, message: Insert | Update | Delete) -> list[Change]:
    if isinstance(message, Update):
        change = upsert_change(shape, message.new, "update", ZERO, 0)
        if message.old is not None:
            old_key = shape.key_of(message.old)
            if old_key != change.key:
                # The primary key changed: the old key's vectors must go.
                return [delete_change(shape, old_key, ZERO, 0), change]
        return [change]
    if isinstance(message, Insert):
        return [upsert_change(shape, message.new, "insert", ZERO, 0)]
    return [delete_change(shape, shape.key_of(message.old), ZERO, 0)]
