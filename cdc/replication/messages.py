"""The logical replication messages: what a decoder hands the transaction assembler.

Frozen dataclasses, one per message of the pgoutput protocol (versions 1 to 4); the wal2json
decoder produces the same types. LSNs and timestamps stay the integers found on the
wire (timestamps are microseconds since 2000-01-01 UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from cdc.replication.lsn import Lsn


class UnchangedToast:
    """Marker for a TOASTed column the server did not send because the update left it alone.

    There is exactly one instance, `UNCHANGED_TOAST`; compare with ``is``. It survives copy and
    pickle as the same object, so code downstream can keep relying on identity.
    """

    __slots__ = ()
    _instance: UnchangedToast | None = None

    def __new__(cls) -> UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = UnchangedToast()

Value: TypeAlias = str | UnchangedToast | None
Row: TypeAlias = tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a transaction that is sent whole, at commit time (not streamed)."""

    final_lsn: Lsn
    commit_time: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """End of a Begin..Commit transaction; `commit_lsn` equals the Begin's `final_lsn`."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction was replayed under a replication origin; follows its Begin."""

    commit_lsn: Lsn
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """`is_key`: part of the replica identity (with REPLICA IDENTITY FULL: every column)."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """Schema of a table, sent before its first change and again after invalidations
    (ALTER, TRUNCATE, a Stream Abort...). `replica_identity` is 'd', 'n', 'f' or 'i'."""

    xid: int | None
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """Name of a user-defined type used by a column (sent before the Relation)."""

    xid: int | None
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row. See `Update` for what `xid` means."""

    xid: int | None
    relation_id: int
    new: Row


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row.

    `xid` is None outside a streamed block; inside one it is the xid of the (sub)transaction
    that made the change, which is a subtransaction's xid after a SAVEPOINT, not necessarily
    the block's top-level xid. `old_kind` is 'K' (old replica identity key, other columns
    None) when the key changed, 'O' (whole old row) with REPLICA IDENTITY FULL, else None.
    Unchanged TOASTed columns of `new` are `UNCHANGED_TOAST`.
    """

    xid: int | None
    relation_id: int
    old: Row | None
    old_kind: str | None
    new: Row


@dataclass(frozen=True, slots=True)
class Delete:
    """A deleted row: `old_kind` 'K' (key columns set, the rest None) or 'O' (whole row)."""

    xid: int | None
    relation_id: int
    old: Row
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of one or more tables (CASCADE adds the referencing ones)."""

    xid: int | None
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """pg_logical_emit_message(); non-transactional ones arrive outside any transaction."""

    xid: int | None
    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Start of a block of a large in-progress transaction `xid` (streaming on)."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """End of a streamed block; more blocks or the Stream Commit/Abort follow later."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """The streamed transaction `xid` committed: apply all its non-aborted blocks."""

    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """Discard changes of `subxid` (the whole transaction when `subxid == xid`).

    `abort_lsn`/`abort_time` are only sent with streaming = parallel (protocol 4).
    """

    xid: int
    subxid: int
    abort_lsn: Lsn | None
    abort_time: int | None


@dataclass(frozen=True, slots=True)
class BeginPrepare:
    """Start of a prepared transaction (two_phase on)."""

    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class Prepare:
    """PREPARE TRANSACTION of the transaction started by Begin Prepare."""

    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class CommitPrepared:
    """COMMIT PREPARED of transaction `gid`."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPrepared:
    """ROLLBACK PREPARED of transaction `gid`."""

    flags: int
    prepare_end_lsn: Lsn
    rollback_end_lsn: Lsn
    prepare_time: int
    rollback_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class StreamPrepare:
    """PREPARE TRANSACTION of a streamed transaction (two_phase and streaming on)."""

    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)


# Frozen dataclasses pay for `object.__setattr__` on every field in their generated __init__,
# which doubles the cost of an Insert. The change messages, built once per row, are therefore
# assembled through their slot descriptors; the result is indistinguishable from calling the
# class (the tests compare both), and nothing else about the classes changes.
_new_object = object.__new__
_SET_INSERT: Final = tuple(getattr(Insert, f).__set__ for f in Insert.__slots__)
_SET_UPDATE: Final = tuple(getattr(Update, f).__set__ for f in Update.__slots__)
_SET_DELETE: Final = tuple(getattr(Delete, f).__set__ for f in Delete.__slots__)


def make_insert(xid: int | None, relation_id: int, new: Row) -> Insert:
    obj: Insert = _new_object(Insert)
    set_xid, set_relation_id, set_new = _SET_INSERT
    set_xid(obj, xid)
    set_relation_id(obj, relation_id)
    set_new(obj, new)
    return obj


def make_update(
    xid: int | None, relation_id: int, old: Row | None, old_kind: str | None, new: Row
) -> Update:
    obj: Update = _new_object(Update)
    set_xid, set_relation_id, set_old, set_old_kind, set_new = _SET_UPDATE
    set_xid(obj, xid)
    set_relation_id(obj, relation_id)
    set_old(obj, old)
    set_old_kind(obj, old_kind)
    set_new(obj, new)
    return obj


def make_delete(xid: int | None, relation_id: int, old: Row, old_kind: str) -> Delete:
    obj: Delete = _new_object(Delete)
    set_xid, set_relation_id, set_old, set_old_kind = _SET_DELETE
    set_xid(obj, xid)
    set_relation_id(obj, relation_id)
    set_old(obj, old)
    set_old_kind(obj, old_kind)
    return obj
