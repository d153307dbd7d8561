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
from cdc.replication.lsn import Lsn
from cdc.replication.messages import (
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
    make_delete,
    make_insert,
    make_update,
)
from cdc.replication.pgwire import (
    BEGIN,
    BEGIN_PREPARE,
    COLUMN_TAIL,
    COMMIT,
    MARK_KEY,
    MARK_NEW,
    MESSAGE_HEAD,
    OLD_MARKERS,
    PREPARE,
    RELATION_TAIL,
    ROLLBACK_PREPARED,
    STREAM_ABORT,
    STREAM_ABORT_PARALLEL,
    STREAM_COMMIT,
    STREAM_START,
    TRUNCATE_CASCADE,
    TRUNCATE_HEAD,
    TRUNCATE_RESTART_IDENTITY,
    U8,
    U32,
    U32X2,
    U64,
    MalformedError,
    expect_end,
    marker_error,
    read_at,
    read_cstring,
    read_fixed,
    read_tuple,
    read_xid,
    trailing_error,
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

# A parser gets the whole message (type byte included) and whether we are inside a
# Stream Start..Stream Stop block, which is what decides if a leading xid is present.
_Parser: TypeAlias = Callable[[bytes, bool], Message]


def _begin(buf: bytes, streamed: bool) -> Begin:
    final_lsn, commit_time, xid = read_fixed(buf, BEGIN)
    return Begin(Lsn(final_lsn), commit_time, xid)


def _commit(buf: bytes, streamed: bool) -> Commit:
    flags, commit_lsn, end_lsn, commit_time = read_fixed(buf, COMMIT)
    return Commit(flags, Lsn(commit_lsn), Lsn(end_lsn), commit_time)


def _origin(buf: bytes, streamed: bool) -> Origin:
    (commit_lsn,) = read_at(U64, buf, 1)
    name, pos = read_cstring(buf, 9)
    expect_end(buf, pos)
    return Origin(Lsn(commit_lsn), name)


def _relation(buf: bytes, streamed: bool) -> Relation:
    xid, pos = read_xid(buf, streamed)
    (relation_id,) = read_at(U32, buf, pos)
    namespace, pos = read_cstring(buf, pos + 4)
    name, pos = read_cstring(buf, pos)
    identity, ncols = read_at(RELATION_TAIL, buf, pos)
    pos += RELATION_TAIL.size
    columns = []
    for _ in range(ncols):
        (flags,) = read_at(U8, buf, pos)
        column, pos = read_cstring(buf, pos + 1)
        type_oid, type_modifier = read_at(COLUMN_TAIL, buf, pos)
        pos += COLUMN_TAIL.size
        columns.append(RelationColumn(column, type_oid, type_modifier, bool(flags & 1)))
    expect_end(buf, pos)
    return Relation(xid, relation_id, namespace, name, chr(identity), tuple(columns))


def _type(buf: bytes, streamed: bool) -> TypeInfo:
    xid, pos = read_xid(buf, streamed)
    (type_oid,) = read_at(U32, buf, pos)
    namespace, pos = read_cstring(buf, pos + 4)
    name, pos = read_cstring(buf, pos)
    expect_end(buf, pos)
    return TypeInfo(xid, type_oid, namespace, name)


def _change_head(buf: bytes, streamed: bool) -> tuple[int | None, int, int, int]:
    """Read [xid,] relation id and the first submessage marker of Insert/Update/Delete.

    Returns (xid, relation_id, marker byte, offset of the marker). One `unpack_from` for the
    whole fixed head, because this runs once per change.
    """
    try:
        if streamed:
            xid, relation_id = U32X2.unpack_from(buf, 1)
            return xid, relation_id, buf[9], 9
        (relation_id,) = U32.unpack_from(buf, 1)
        return None, relation_id, buf[5], 5
    except (struct.error, IndexError):
        raise MalformedError(1, "message ends inside its header") from None


def _insert(buf: bytes, streamed: bool) -> Insert:
    xid, relation_id, marker, pos = _change_head(buf, streamed)
    if marker != MARK_NEW:
        raise marker_error(buf, pos, "'N'")
    new, pos = read_tuple(buf, pos + 1)
    if pos != len(buf):
        raise trailing_error(buf, pos)
    return make_insert(xid, relation_id, new)


def _update(buf: bytes, streamed: bool) -> Update:
    xid, relation_id, marker, pos = _change_head(buf, streamed)
    old: Row | None = None
    old_kind: str | None = None
    # The old tuple is optional: 'K' when the replica identity key changed, 'O' with
    # REPLICA IDENTITY FULL. The new tuple always follows.
    if marker in OLD_MARKERS:
        old_kind = "K" if marker == MARK_KEY else "O"
        old, pos = read_tuple(buf, pos + 1)
        if pos >= len(buf) or buf[pos] != MARK_NEW:
            raise marker_error(buf, pos, "'N'")
    elif marker != MARK_NEW:
        raise marker_error(buf, pos, "'K', 'O' or 'N'")
    new, pos = read_tuple(buf, pos + 1)
    if pos != len(buf):
        raise trailing_error(buf, pos)
    return make_update(xid, relation_id, old, old_kind, new)


def _delete(buf: bytes, streamed: bool) -> Delete:
    xid, relation_id, marker, pos = _change_head(buf, streamed)
    if marker not in OLD_MARKERS:
        raise marker_error(buf, pos, "'K' or 'O'")
    old, pos = read_tuple(buf, pos + 1)
    if pos != len(buf):
        raise trailing_error(buf, pos)
    return make_delete(xid, relation_id, old, "K" if marker == MARK_KEY else "O")


def _truncate(buf: bytes, streamed: bool) -> Truncate:
    xid, pos = read_xid(buf, streamed)
    nrels, options = read_at(TRUNCATE_HEAD, buf, pos)
    pos += TRUNCATE_HEAD.size
    if len(buf) - pos != 4 * nrels:
        raise MalformedError(
            pos, f"{nrels} relation ids need {4 * nrels} bytes, {len(buf) - pos} left"
        )
    relation_ids = struct.unpack_from(f"!{nrels}I", buf, pos)
    return Truncate(
        xid,
        relation_ids,
        bool(options & TRUNCATE_CASCADE),
        bool(options & TRUNCATE_RESTART_IDENTITY),
    )


def _message(buf: bytes, streamed: bool) -> LogicalMessage:
    # A non-transactional message is never sent inside a streamed block, so the same
    # "xid only when streaming" rule as for changes applies.
    xid, pos = read_xid(buf, streamed)
    flags, lsn = read_at(MESSAGE_HEAD, buf, pos)
    prefix, pos = read_cstring(buf, pos + MESSAGE_HEAD.size)
    (length,) = read_at(U32, buf, pos)
    pos += 4
    if len(buf) - pos != length:
        raise MalformedError(pos, f"content length {length} but {len(buf) - pos} bytes left")
    return LogicalMessage(xid, bool(flags & 1), Lsn(lsn), prefix, buf[pos:])


def _stream_commit(buf: bytes, streamed: bool) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, commit_time = read_fixed(buf, STREAM_COMMIT)
    return StreamCommit(xid, flags, Lsn(commit_lsn), Lsn(end_lsn), commit_time)


def _stream_abort(buf: bytes, streamed: bool) -> StreamAbort:
    # Abort LSN and time are sent only with streaming = parallel (protocol 4); the message has
    # no flag for it, so the body length is the only way to tell.
    if len(buf) == 1 + STREAM_ABORT_PARALLEL.size:
        xid, subxid, abort_lsn, abort_time = STREAM_ABORT_PARALLEL.unpack_from(buf, 1)
        return StreamAbort(xid, subxid, Lsn(abort_lsn), abort_time)
    xid, subxid = read_fixed(buf, STREAM_ABORT)
    return StreamAbort(xid, subxid, None, None)


def _gid_message(buf: bytes, layout: struct.Struct) -> tuple[tuple[int, ...], str]:
    """Fixed fields followed by the prepared transaction's GID string."""
    fields = read_at(layout, buf, 1)
    gid, pos = read_cstring(buf, 1 + layout.size)
    expect_end(buf, pos)
    return fields, gid


def _begin_prepare(buf: bytes, streamed: bool) -> BeginPrepare:
    (prepare_lsn, end_lsn, prepare_time, xid), gid = _gid_message(buf, BEGIN_PREPARE)
    return BeginPrepare(Lsn(prepare_lsn), Lsn(end_lsn), prepare_time, xid, gid)


def _prepare(buf: bytes, streamed: bool) -> Prepare:
    (flags, prepare_lsn, end_lsn, prepare_time, xid), gid = _gid_message(buf, PREPARE)
    return Prepare(flags, Lsn(prepare_lsn), Lsn(end_lsn), prepare_time, xid, gid)


def _commit_prepared(buf: bytes, streamed: bool) -> CommitPrepared:
    (flags, commit_lsn, end_lsn, commit_time, xid), gid = _gid_message(buf, PREPARE)
    return CommitPrepared(flags, Lsn(commit_lsn), Lsn(end_lsn), commit_time, xid, gid)


def _rollback_prepared(buf: bytes, streamed: bool) -> RollbackPrepared:
    fields, gid = _gid_message(buf, ROLLBACK_PREPARED)
    flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid = fields
    return RollbackPrepared(
        flags, Lsn(prepare_end_lsn), Lsn(rollback_end_lsn), prepare_time, rollback_time, xid, gid
    )


def _stream_prepare(buf: bytes, streamed: bool) -> StreamPrepare:
    (flags, prepare_lsn, end_lsn, prepare_time, xid), gid = _gid_message(buf, PREPARE)
    return StreamPrepare(flags, Lsn(prepare_lsn), Lsn(end_lsn), prepare_time, xid, gid)


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
        except MalformedError as exc:
            raise ProtocolError(
                f"malformed pgoutput {_NAMES[kind]} message {_describe(kind)} at offset"
                f" {exc.offset}: {exc.reason} ({len(buf)} bytes)"
            ) from None

    def _stream_start(self, buf: bytes, streamed: bool) -> StreamStart:
        if streamed:
            raise MalformedError(0, "Stream Start inside a streamed block (missing Stream Stop)")
        xid, first_segment = read_fixed(buf, STREAM_START)
        self._in_stream = True
        return StreamStart(xid, first_segment == 1)

    def _stream_stop(self, buf: bytes, streamed: bool) -> StreamStop:
        if not streamed:
            raise MalformedError(0, "Stream Stop outside a streamed block")
        expect_end(buf, 1)
        self._in_stream = False
        return StreamStop()
