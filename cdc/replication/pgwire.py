"""Reading pgoutput's wire layout: fixed fields, C strings, tuples, and where a read failed.

The primitives `cdc.replication.pgoutput` builds its message parsers from. Network byte order
throughout; every failure is a `MalformedError` carrying the offset, never a `struct.error`.
"""

from __future__ import annotations

import struct
from typing import Final

from cdc.replication.messages import UNCHANGED_TOAST, Row, Value

# Network byte order throughout; LSNs are unsigned, timestamps signed, xids and OIDs unsigned.
U8: Final = struct.Struct("!B")
U16: Final = struct.Struct("!H")
U32: Final = struct.Struct("!I")
length_at: Final = U32.unpack_from  # bound once: called for every text column
U32X2: Final = struct.Struct("!II")
U64: Final = struct.Struct("!Q")
BEGIN: Final = struct.Struct("!QqI")
COMMIT: Final = struct.Struct("!BQQq")
STREAM_START: Final = struct.Struct("!IB")
STREAM_COMMIT: Final = struct.Struct("!IBQQq")
STREAM_ABORT: Final = struct.Struct("!II")
STREAM_ABORT_PARALLEL: Final = struct.Struct("!IIQq")
BEGIN_PREPARE: Final = struct.Struct("!QQqI")
PREPARE: Final = struct.Struct("!BQQqI")  # also Commit Prepared and Stream Prepare
ROLLBACK_PREPARED: Final = struct.Struct("!BQQqqI")
MESSAGE_HEAD: Final = struct.Struct("!BQ")
RELATION_TAIL: Final = struct.Struct("!BH")
COLUMN_TAIL: Final = struct.Struct("!Ii")
TRUNCATE_HEAD: Final = struct.Struct("!IB")

COL_TEXT: Final = ord("t")
COL_NULL: Final = ord("n")
COL_UNCHANGED: Final = ord("u")
COL_BINARY: Final = ord("b")
MARK_NEW: Final = ord("N")
MARK_KEY: Final = ord("K")
MARK_OLD: Final = ord("O")
OLD_MARKERS: Final = frozenset((MARK_KEY, MARK_OLD))

TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2


class MalformedError(Exception):
    """Internal: where and why a message could not be read; `decode` adds the type byte."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def read_fixed(buf: bytes, layout: struct.Struct) -> tuple[int, ...]:
    """Unpack a message whose body is exactly `layout`; anything shorter or longer is malformed."""
    if len(buf) != 1 + layout.size:
        raise MalformedError(1, f"body must be {layout.size} bytes, got {len(buf) - 1}")
    return layout.unpack_from(buf, 1)


def expect_end(buf: bytes, pos: int) -> None:
    """Reject trailing bytes: they mean we and the server disagree about the layout."""
    if pos != len(buf):
        raise trailing_error(buf, pos)


def read_at(layout: struct.Struct, buf: bytes, pos: int) -> tuple[int, ...]:
    """`unpack_from` that reports a short buffer as `MalformedError` at `pos`."""
    try:
        return layout.unpack_from(buf, pos)
    except struct.error:
        raise MalformedError(
            pos, f"needs {layout.size} bytes, {max(len(buf) - pos, 0)} left"
        ) from None


def read_cstring(buf: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string; return it and the offset after the terminator."""
    end = buf.find(0, pos)
    if end < 0:
        raise MalformedError(pos, "unterminated string")
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise MalformedError(pos + exc.start, "string is not valid UTF-8") from None


def read_xid(buf: bytes, streamed: bool) -> tuple[int | None, int]:
    """Leading xid of a change-like message (present only inside a streamed block)."""
    if streamed:
        return read_at(U32, buf, 1)[0], 5
    return None, 1


def read_tuple(buf: bytes, pos: int) -> tuple[Row, int]:
    """Read TupleData at `pos`; return the row and the offset after it.

    This is the hot loop of the whole streamer: one branch per column, one `unpack_from` for
    each text length, and one slice + decode per text value. `pos` only moves once a column
    is complete, so when anything fails it still points at the column that broke.
    """
    size = len(buf)
    try:
        (ncols,) = U16.unpack_from(buf, pos)
        pos += 2
        values: list[Value] = []
        append = values.append
        for _ in range(ncols):
            kind = buf[pos]
            if kind == COL_TEXT:
                start = pos + 5
                end = start + length_at(buf, pos + 1)[0]
                if end > size:  # a short slice would pass silently
                    raise MalformedError(pos, f"text value overruns the message by {end - size}")
                append(buf[start:end].decode())
                pos = end
            elif kind == COL_NULL:
                append(None)
                pos += 1
            elif kind == COL_UNCHANGED:
                append(UNCHANGED_TOAST)
                pos += 1
            elif kind == COL_BINARY:
                raise MalformedError(pos, "binary column value, but binary mode is never asked for")
            else:
                raise MalformedError(pos, f"unknown column kind {chr(kind)!r}")
    except (struct.error, IndexError):
        raise MalformedError(pos, "tuple data truncated") from None
    except UnicodeDecodeError as exc:
        raise MalformedError(pos, f"text value is not valid UTF-8: {exc.reason}") from None
    return tuple(values), pos


def marker_error(buf: bytes, pos: int, wanted: str) -> MalformedError:
    found = repr(chr(buf[pos])) if pos < len(buf) else "end of message"
    return MalformedError(pos, f"expected {wanted} tuple marker, got {found}")


def trailing_error(buf: bytes, pos: int) -> MalformedError:
    return MalformedError(pos, f"{len(buf) - pos} unexpected trailing bytes")
