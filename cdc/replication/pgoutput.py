"""Decoder for the pgoutput logical replication protocol (versions 1 to 4).

Bytes in, frozen dataclasses out: no socket, no database, no clock. The layouts follow the
PostgreSQL 18 "Logical Replication Message Formats" chapter and
``src/backend/replication/logical/proto.c``. LSNs and timestamps stay the plain integers found on
the wire (timestamps are microseconds since 2000-01-01 UTC); `cdc.replication.frames` converts
timestamps.

Speed matters because every change of every published table passes through here, so the parsers
are plain functions over precompiled `struct.Struct` objects with a local read offset, picked by a
dict keyed on the type byte. Errors never escape as `struct.error`/`IndexError`: malformed or
unknown input raises `ProtocolError` naming the message type byte and the offset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, TypeAlias

from cdc.errors import ProtocolError
from cdc.replication.messages import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Prepare,
    Relation,
    RelationColumn,
    RollbackPrepared,
    Row,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
    Update,
    Value,
)

# Names for error messages, keyed by type byte.
_NAMES: Final[dict[int, str]] = {
    ord("B"): "Begin",
    ord("C"): "Commit",
    ord("O"): "Origin",
    ord("R"): "Relation",
    ord("Y"): "Type",
    ord("I"): "Insert",
    ord("U"): "Update",
    ord("D"): "Delete",
    ord("T"): "Truncate",
    ord("M"): "Message",
    ord("S"): "Stream Start",
    ord("E"): "Stream Stop",
    ord("c"): "Stream Commit",
    ord("A"): "Stream Abort",
    ord("b"): "Begin Prepare",
    ord("P"): "Prepare",
    ord("K"): "Commit Prepared",
    ord("r"): "Rollback Prepared",
    ord("p"): "Stream Prepare",
}

# Network byte order throughout; LSNs are unsigned, timestamps signed, xids and OIDs unsigned.
_U8: Final = struct.Struct("!B")
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_length_at: Final = _U32.unpack_from  # bound once: called for every text column
_U32X2: Final = struct.Struct("!II")
_U64: Final = struct.Struct("!Q")
_BEGIN: Final = struct.Struct("!QqI")
_COMMIT: Final = struct.Struct("!BQQq")
_STREAM_START: Final = struct.Struct("!IB")
_STREAM_COMMIT: Final = struct.Struct("!IBQQq")
_STREAM_ABORT: Final = struct.Struct("!II")
_STREAM_ABORT_PARALLEL: Final = struct.Struct("!IIQq")
_BEGIN_PREPARE: Final = struct.Struct("!QQqI")
_PREPARE: Final = struct.Struct("!BQQqI")  # also Commit Prepared and Stream Prepare
_ROLLBACK_PREPARED: Final = struct.Struct("!BQQqqI")
_MESSAGE_HEAD: Final = struct.Struct("!BQ")
_RELATION_TAIL: Final = struct.Struct("!BH")
_COLUMN_TAIL: Final = struct.Struct("!Ii")
_TRUNCATE_HEAD: Final = struct.Struct("!IB")

_T: Final = ord("t")
_N: Final = ord("n")
_U: Final = ord("u")
_B: Final = ord("b")
_NEW: Final = ord("N")
_KEY: Final = ord("K")
_OLD: Final = ord("O")
_OLD_MARKERS: Final = frozenset((_KEY, _OLD))

_TRUNCATE_CASCADE: Final = 1
_TRUNCATE_RESTART_IDENTITY: Final = 2


class _MalformedError(Exception):
    """Internal: where and why a message could not be read; `decode` adds the type byte."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


# A parser gets the whole message (type byte included) and whether we are inside a
# Stream Start..Stream Stop block, which is what decides if a leading xid is present.
_Parser: TypeAlias = Callable[[bytes, bool], Message]


def _fixed(buf: bytes, layout: struct.Struct) -> tuple[int, ...]:
    """Unpack a message whose body is exactly `layout`; anything shorter or longer is malformed."""
    if len(buf) != 1 + layout.size:
        raise _MalformedError(1, f"body must be {layout.size} bytes, got {len(buf) - 1}")
    return layout.unpack_from(buf, 1)


def _end(buf: bytes, pos: int) -> None:
    """Reject trailing bytes: they mean we and the server disagree about the layout."""
    if pos != len(buf):
        raise _trailing_error(buf, pos)


def _read(layout: struct.Struct, buf: bytes, pos: int) -> tuple[int, ...]:
    """`unpack_from` that reports a short buffer as `_MalformedError` at `pos`."""
    try:
        return layout.unpack_from(buf, pos)
    except struct.error:
        raise _MalformedError(
            pos, f"needs {layout.size} bytes, {max(len(buf) - pos, 0)} left"
        ) from None


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string; return it and the offset after the terminator."""
    end = buf.find(0, pos)
    if end < 0:
        raise _MalformedError(pos, "unterminated string")
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise _MalformedError(pos + exc.start, "string is not valid UTF-8") from None


def _xid(buf: bytes, streamed: bool) -> tuple[int | None, int]:
    """Leading xid of a change-like message (present only inside a streamed block)."""
    if streamed:
        return _read(_U32, buf, 1)[0], 5
    return None, 1


def _tuple(buf: bytes, pos: int) -> tuple[Row, int]:
    """Read TupleData at `pos`; return the row and the offset after it.

    This is the hot loop of the whole streamer: one branch per column, one `unpack_from` for
    each text length, and one slice + decode per text value. `pos` only moves once a column
    is complete, so when anything fails it still points at the column that broke.
    """
    size = len(buf)
    try:
        (ncols,) = _U16.unpack_from(buf, pos)
        pos += 2
        values: list[Value] = []
        append = values.append
        for _ in range(ncols):
            kind = buf[pos]
            if kind == _T:
                start = pos + 5
                end = start + _length_at(buf, pos + 1)[0]
                if end > size:  # a short slice would pass silently
                    raise _MalformedError(pos, f"text value overruns the message by {end - size}")
                append(buf[start:end].decode())
                pos = end
            elif kind == _N:
                append(None)
                pos += 1
            elif kind == _U:
                append(UNCHANGED_TOAST)
                pos += 1
            elif kind == _B:
                raise _MalformedError(
                    pos, "binary column value, but binary mode is never asked for"
                )
            else:
                raise _MalformedError(pos, f"unknown column kind {chr(kind)!r}")
    except (struct.error, IndexError):
        raise _MalformedError(pos, "tuple data truncated") from None
    except UnicodeDecodeError as exc:
        raise _MalformedError(pos, f"text value is not valid UTF-8: {exc.reason}") from None
    return tuple(values), pos


def _begin(buf: bytes, streamed: bool) -> Begin:
    final_lsn, commit_time, xid = _fixed(buf, _BEGIN)
    return Begin(final_lsn, commit_time, xid)


def _commit(buf: bytes, streamed: bool) -> Commit:
    flags, commit_lsn, end_lsn, commit_time = _fixed(buf, _COMMIT)
    return Commit(flags, commit_lsn, end_lsn, commit_time)


def _origin(buf: bytes, streamed: bool) -> Origin:
    (commit_lsn,) = _read(_U64, buf, 1)
    name, pos = _cstring(buf, 9)
    _end(buf, pos)
    return Origin(commit_lsn, name)


def _relation(buf: bytes, streamed: bool) -> Relation:
    xid, pos = _xid(buf, streamed)
    (relation_id,) = _read(_U32, buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    identity, ncols = _read(_RELATION_TAIL, buf, pos)
    pos += _RELATION_TAIL.size
    columns = []
    for _ in range(ncols):
        (flags,) = _read(_U8, buf, pos)
        column, pos = _cstring(buf, pos + 1)
        type_oid, type_modifier = _read(_COLUMN_TAIL, buf, pos)
        pos += _COLUMN_TAIL.size
        columns.append(RelationColumn(column, type_oid, type_modifier, bool(flags & 1)))
    _end(buf, pos)
    return Relation(xid, relation_id, namespace, name, chr(identity), tuple(columns))


def _type(buf: bytes, streamed: bool) -> TypeInfo:
    xid, pos = _xid(buf, streamed)
    (type_oid,) = _read(_U32, buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    _end(buf, pos)
    return TypeInfo(xid, type_oid, namespace, name)


def _change_head(buf: bytes, streamed: bool) -> tuple[int | None, int, int, int]:
    """Read [xid,] relation id and the first submessage marker of Insert/Update/Delete.

    Returns (xid, relation_id, marker byte, offset of the marker). One `unpack_from` for the
    whole fixed head, because this runs once per change.
    """
    try:
        if streamed:
            xid, relation_id = _U32X2.unpack_from(buf, 1)
            return xid, relation_id, buf[9], 9
        (relation_id,) = _U32.unpack_from(buf, 1)
        return None, relation_id, buf[5], 5
    except (struct.error, IndexError):
        raise _MalformedError(1, "message ends inside its header") from None


def _marker_error(buf: bytes, pos: int, wanted: str) -> _MalformedError:
    found = repr(chr(buf[pos])) if pos < len(buf) else "end of message"
    return _MalformedError(pos, f"expected {wanted} tuple marker, got {found}")


def _trailing_error(buf: bytes, pos: int) -> _MalformedError:
    return _MalformedError(pos, f"{len(buf) - pos} unexpected trailing bytes")


# Frozen dataclasses pay for `object.__setattr__` on every field in their generated __init__,
# which doubles the cost of an Insert. The change messages, built once per row, are therefore
# assembled through their slot descriptors; the result is indistinguishable from calling the
# class (the tests compare both), and nothing else about the classes changes.
_new_object = object.__new__
_SET_INSERT: Final = tuple(getattr(Insert, f).__set__ for f in Insert.__slots__)
_SET_UPDATE: Final = tuple(getattr(Update, f).__set__ for f in Update.__slots__)
_SET_DELETE: Final = tuple(getattr(Delete, f).__set__ for f in Delete.__slots__)


def _make_insert(xid: int | None, relation_id: int, new: Row) -> Insert:
    obj: Insert = _new_object(Insert)
    set_xid, set_relation_id, set_new = _SET_INSERT
    set_xid(obj, xid)
    set_relation_id(obj, relation_id)
    set_new(obj, new)
    return obj


def _make_update(
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


def _make_delete(xid: int | None, relation_id: int, old: Row, old_kind: str) -> Delete:
    obj: Delete = _new_object(Delete)
    set_xid, set_relation_id, set_old, set_old_kind = _SET_DELETE
    set_xid(obj, xid)
    set_relation_id(obj, relation_id)
    set_old(obj, old)
    set_old_kind(obj, old_kind)
    return obj


def _insert(buf: bytes, streamed: bool) -> Insert:
    xid, relation_id, marker, pos = _change_head(buf, streamed)
    if marker != _NEW:
        raise _marker_error(buf, pos, "'N'")
    new, pos = _tuple(buf, pos + 1)
    if pos != len(buf):
        raise _trailing_error(buf, pos)
    return _make_insert(xid, relation_id, new)


def _update(buf: bytes, streamed: bool) -> Update:
    xid, relation_id, marker, pos = _change_head(buf, streamed)
    old: Row | None = None
    old_kind: str | None = None
    # The old tuple is optional: 'K' when the replica identity key changed, 'O' with
    # REPLICA IDENTITY FULL. The new tuple always follows.
    if marker in _OLD_MARKERS:
        old_kind = "K" if marker == _KEY else "O"
        old, pos = _tuple(buf, pos + 1)
        if pos >= len(buf) or buf[pos] != _NEW:
            raise _marker_error(buf, pos, "'N'")
    elif marker != _NEW:
        raise _marker_error(buf, pos, "'K', 'O' or 'N'")
    new, pos = _tuple(buf, pos + 1)
    if pos != len(buf):
        raise _trailing_error(buf, pos)
    return _make_update(xid, relation_id, old, old_kind, new)


def _delete(buf: bytes, streamed: bool) -> Delete:
    xid, relation_id, marker, pos = _change_head(buf, streamed)
    if marker not in _OLD_MARKERS:
        raise _marker_error(buf, pos, "'K' or 'O'")
    old, pos = _tuple(buf, pos + 1)
    if pos != len(buf):
        raise _trailing_error(buf, pos)
    return _make_delete(xid, relation_id, old, "K" if marker == _KEY else "O")


def _truncate(buf: bytes, streamed: bool) -> Truncate:
    xid, pos = _xid(buf, streamed)
    nrels, options = _read(_TRUNCATE_HEAD, buf, pos)
    pos += _TRUNCATE_HEAD.size
    if len(buf) - pos != 4 * nrels:
        raise _MalformedError(
            pos, f"{nrels} relation ids need {4 * nrels} bytes, {len(buf) - pos} left"
        )
    relation_ids = struct.unpack_from(f"!{nrels}I", buf, pos)
    return Truncate(
        xid,
        relation_ids,
        bool(options & _TRUNCATE_CASCADE),
        bool(options & _TRUNCATE_RESTART_IDENTITY),
    )


def _message(buf: bytes, streamed: bool) -> LogicalMessage:
    # A non-transactional message is never sent inside a streamed block, so the same
    # "xid only when streaming" rule as for changes applies.
    xid, pos = _xid(buf, streamed)
    flags, lsn = _read(_MESSAGE_HEAD, buf, pos)
    prefix, pos = _cstring(buf, pos + _MESSAGE_HEAD.size)
    (length,) = _read(_U32, buf, pos)
    pos += 4
    if len(buf) - pos != length:
        raise _MalformedError(pos, f"content length {length} but {len(buf) - pos} bytes left")
    return LogicalMessage(xid, bool(flags & 1), lsn, prefix, buf[pos:])


def _stream_commit(buf: bytes, streamed: bool) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, commit_time = _fixed(buf, _STREAM_COMMIT)
    return StreamCommit(xid, flags, commit_lsn, end_lsn, commit_time)


def _stream_abort(buf: bytes, streamed: bool) -> StreamAbort:
    # Abort LSN and time are sent only with streaming = parallel (protocol 4); the message has
    # no flag for it, so the body length is the only way to tell.
    if len(buf) == 1 + _STREAM_ABORT_PARALLEL.size:
        xid, subxid, abort_lsn, abort_time = _STREAM_ABORT_PARALLEL.unpack_from(buf, 1)
        return StreamAbort(xid, subxid, abort_lsn, abort_time)
    xid, subxid = _fixed(buf, _STREAM_ABORT)
    return StreamAbort(xid, subxid, None, None)


def _gid_message(buf: bytes, layout: struct.Struct) -> tuple[tuple[int, ...], str]:
    """Fixed fields followed by the prepared transaction's GID string."""
    fields = _read(layout, buf, 1)
    gid, pos = _cstring(buf, 1 + layout.size)
    _end(buf, pos)
    return fields, gid


def _begin_prepare(buf: bytes, streamed: bool) -> BeginPrepare:
    (prepare_lsn, end_lsn, prepare_time, xid), gid = _gid_message(buf, _BEGIN_PREPARE)
    return BeginPrepare(prepare_lsn, end_lsn, prepare_time, xid, gid)


def _prepare(buf: bytes, streamed: bool) -> Prepare:
    (flags, prepare_lsn, end_lsn, prepare_time, xid), gid = _gid_message(buf, _PREPARE)
    return Prepare(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)


def _commit_prepared(buf: bytes, streamed: bool) -> CommitPrepared:
    (flags, commit_lsn, end_lsn, commit_time, xid), gid = _gid_message(buf, _PREPARE)
    return CommitPrepared(flags, commit_lsn, end_lsn, commit_time, xid, gid)


def _rollback_prepared(buf: bytes, streamed: bool) -> RollbackPrepared:
    fields, gid = _gid_message(buf, _ROLLBACK_PREPARED)
    flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid = fields
    return RollbackPrepared(
        flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid, gid
    )


def _stream_prepare(buf: bytes, streamed: bool) -> StreamPrepare:
    (flags, prepare_lsn, end_lsn, prepare_time, xid), gid = _gid_message(buf, _PREPARE)
    return StreamPrepare(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)


# Parsers that do not change decoder state; Stream Start/Stop are methods of the decoder.
_PARSERS: Final[dict[int, _Parser]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
    ord("c"): _stream_commit,
    ord("A"): _stream_abort,
    ord("b"): _begin_prepare,
    ord("P"): _prepare,
    ord("K"): _commit_prepared,
    ord("r"): _rollback_prepared,
    ord("p"): _stream_prepare,
}


def _describe(kind: int) -> str:
    """Type byte as shown in errors: the character and its hex value."""
    return f"{chr(kind)!r} (0x{kind:02x})"


class PgOutputDecoder:
    """Decode pgoutput messages, one `decode` call per XLogData payload.

    Stateful only in one bit: whether we are inside a Stream Start..Stream Stop block, because
    that decides whether change/relation/type/message messages carry a leading xid. Use one
    decoder per replication connection: after a reconnect the server starts outside a block.
    """

    __slots__ = ("_in_stream", "_parsers")

    def __init__(self) -> None:
        self._in_stream = False
        self._parsers: dict[int, _Parser] = {
            **_PARSERS,
            ord("S"): self._stream_start,
            ord("E"): self._stream_stop,
        }

    @property
    def in_stream(self) -> bool:
        """True between a Stream Start and its Stream Stop."""
        return self._in_stream

    def decode(self, payload: bytes | memoryview) -> Message:
        """Decode one pgoutput message; raise `ProtocolError` if it is unknown or malformed."""
        # bytes gives us find() for strings, and slicing + decode() of bytes is about twice as
        # fast as going through memoryview slices, which more than pays for this one copy.
        buf = payload if type(payload) is bytes else bytes(payload)
        if not buf:
            raise ProtocolError("empty pgoutput message at offset 0")
        kind = buf[0]
        parser = self._parsers.get(kind)
        if parser is None:
            raise ProtocolError(
                f"unknown pgoutput message type {_describe(kind)} at offset 0"
                f" ({len(buf)} bytes, starting {buf[:16].hex()})"
            )
        try:
            return parser(buf, self._in_stream)
        except _MalformedError as exc:
            raise ProtocolError(
                f"malformed pgoutput {_NAMES[kind]} message {_describe(kind)} at offset"
                f" {exc.offset}: {exc.reason} ({len(buf)} bytes)"
            ) from None

    def _stream_start(self, buf: bytes, streamed: bool) -> StreamStart:
        if streamed:
            raise _MalformedError(0, "Stream Start inside a streamed block (missing Stream Stop)")
        xid, first_segment = _fixed(buf, _STREAM_START)
        self._in_stream = True
        return StreamStart(xid, first_segment == 1)

    def _stream_stop(self, buf: bytes, streamed: bool) -> StreamStop:
        if not streamed:
            raise _MalformedError(0, "Stream Stop outside a streamed block")
        _end(buf, 1)
        self._in_stream = False
        return StreamStop()
