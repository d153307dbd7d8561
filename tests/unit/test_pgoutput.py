"""Tests for the pgoutput decoder: hand-built messages for every type and edge case, then the
golden frames captured from a real PostgreSQL 18 (see tests/unit/golden/capture.py)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
import struct

import pytest

from cdc.errors import ProtocolError
from cdc.pgoutput import (
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
    PgOutputDecoder,
    Prepare,
    Relation,
    RelationColumn,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
    UnchangedToast,
    Update,
    Value,
)

LSN = 0x0000_0001_6B37_4D48
END_LSN = LSN + 0x30
TS = 802_051_200_123_456  # 2025-06-01 00:00:00.123456 UTC in microseconds since 2000-01-01
XID = 7_341
SUBXID = 7_342
REL = 16_384


# --- builders: the wire format written out independently of the decoder -------------------


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*values: Value | bytes) -> bytes:
    """TupleData: str -> 't', None -> 'n', UNCHANGED_TOAST -> 'u', bytes -> 'b' (binary)."""
    out = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(value, bytes):
            out += b"b" + struct.pack("!I", len(value)) + value
        else:
            assert isinstance(value, str)
            raw = value.encode()
            out += b"t" + struct.pack("!I", len(raw)) + raw
    return out


def xid_prefix(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def relation_msg(xid: int | None = None) -> bytes:
    columns = [(1, "id", 20, -1), (0, "title", 25, -1), (0, "Body Text", 1043, 260)]
    out = b"R" + xid_prefix(xid) + struct.pack("!I", REL) + cstr("Content") + cstr("Blog Posts")
    out += b"d" + struct.pack("!H", len(columns))
    for flags, name, oid, typmod in columns:
        out += struct.pack("!B", flags) + cstr(name) + struct.pack("!Ii", oid, typmod)
    return out


def insert_msg(*values: Value | bytes, xid: int | None = None) -> bytes:
    return b"I" + xid_prefix(xid) + struct.pack("!I", REL) + b"N" + tuple_data(*values)


EXPECTED_RELATION = Relation(
    None,
    REL,
    "Content",
    "Blog Posts",
    "d",
    (
        RelationColumn("id", 20, -1, True),
        RelationColumn("title", 25, -1, False),
        RelationColumn("Body Text", 1043, 260, False),
    ),
)

# (payload, expected message) for every message type outside a streamed block.
OUTSIDE_STREAM: list[tuple[bytes, Message]] = [
    (b"B" + struct.pack("!QqI", LSN, TS, XID), Begin(LSN, TS, XID)),
    (b"C" + struct.pack("!BQQq", 0, LSN, END_LSN, TS), Commit(0, LSN, END_LSN, TS)),
    (b"O" + struct.pack("!Q", LSN) + cstr("node_β"), Origin(LSN, "node_β")),
    (relation_msg(), EXPECTED_RELATION),
    (
        b"Y" + struct.pack("!I", 90_001) + cstr("public") + cstr("mood"),
        TypeInfo(None, 90_001, "public", "mood"),
    ),
    (insert_msg("1", "سلام دنیا", None), Insert(None, REL, ("1", "سلام دنیا", None))),
    (
        b"U" + struct.pack("!I", REL) + b"N" + tuple_data("1", "新标题", UNCHANGED_TOAST),
        Update(None, REL, None, None, ("1", "新标题", UNCHANGED_TOAST)),
    ),
    (
        b"U"
        + struct.pack("!I", REL)
        + b"K"
        + tuple_data("1", None, None)
        + b"N"
        + tuple_data("2", "t", "b"),
        Update(None, REL, ("1", None, None), "K", ("2", "t", "b")),
    ),
    (
        b"U"
        + struct.pack("!I", REL)
        + b"O"
        + tuple_data("1", "old", "")
        + b"N"
        + tuple_data("1", "new 🎉", ""),
        Update(None, REL, ("1", "old", ""), "O", ("1", "new 🎉", "")),
    ),
    (
        b"D" + struct.pack("!I", REL) + b"K" + tuple_data("1", None, None),
        Delete(None, REL, ("1", None, None), "K"),
    ),
    (
        b"D" + struct.pack("!I", REL) + b"O" + tuple_data("1", "t", "b"),
        Delete(None, REL, ("1", "t", "b"), "O"),
    ),
    (b"T" + struct.pack("!IBI", 1, 0, REL), Truncate(None, (REL,), False, False)),
    (
        b"T" + struct.pack("!IBII", 2, 3, REL, REL + 1),
        Truncate(None, (REL, REL + 1), True, True),
    ),
    (b"T" + struct.pack("!IBI", 1, 2, REL), Truncate(None, (REL,), False, True)),
    (
        b"M" + struct.pack("!BQ", 1, LSN) + cstr("wal2vec") + struct.pack("!I", 5) + b"hello",
        LogicalMessage(None, True, LSN, "wal2vec", b"hello"),
    ),
    (
        b"M" + struct.pack("!BQ", 0, LSN) + cstr("p") + struct.pack("!I", 3) + b"\0\xff\n",
        LogicalMessage(None, False, LSN, "p", b"\0\xff\n"),
    ),
    (
        b"c" + struct.pack("!IBQQq", XID, 0, LSN, END_LSN, TS),
        StreamCommit(XID, 0, LSN, END_LSN, TS),
    ),
    (b"A" + struct.pack("!II", XID, SUBXID), StreamAbort(XID, SUBXID, None, None)),
    (b"A" + struct.pack("!II", XID, XID), StreamAbort(XID, XID, None, None)),
    (
        b"A" + struct.pack("!IIQq", XID, SUBXID, LSN, TS),
        StreamAbort(XID, SUBXID, LSN, TS),
    ),
    (
        b"b" + struct.pack("!QQqI", LSN, END_LSN, TS, XID) + cstr("gid-1"),
        BeginPrepare(LSN, END_LSN, TS, XID, "gid-1"),
    ),
    (
        b"P" + struct.pack("!BQQqI", 0, LSN, END_LSN, TS, XID) + cstr("gid-1"),
        Prepare(0, LSN, END_LSN, TS, XID, "gid-1"),
    ),
    (
        b"K" + struct.pack("!BQQqI", 0, LSN, END_LSN, TS + 1, XID) + cstr("gid-1"),
        CommitPrepared(0, LSN, END_LSN, TS + 1, XID, "gid-1"),
    ),
    (
        b"r" + struct.pack("!BQQqqI", 0, LSN, END_LSN, TS, TS + 5, XID) + cstr("gid-2"),
        RollbackPrepared(0, LSN, END_LSN, TS, TS + 5, XID, "gid-2"),
    ),
    (
        b"p" + struct.pack("!BQQqI", 0, LSN, END_LSN, TS, XID) + cstr(""),
        StreamPrepare(0, LSN, END_LSN, TS, XID, ""),
    ),
]

# Messages that carry a leading xid inside a Stream Start..Stream Stop block.
INSIDE_STREAM: list[tuple[bytes, Message]] = [
    (relation_msg(SUBXID), dataclasses.replace(EXPECTED_RELATION, xid=SUBXID)),
    (
        b"Y" + struct.pack("!II", XID, 90_001) + cstr("public") + cstr("mood"),
        TypeInfo(XID, 90_001, "public", "mood"),
    ),
    (insert_msg("1", "x", xid=SUBXID), Insert(SUBXID, REL, ("1", "x"))),
    (
        b"U" + struct.pack("!II", XID, REL) + b"N" + tuple_data("1", UNCHANGED_TOAST),
        Update(XID, REL, None, None, ("1", UNCHANGED_TOAST)),
    ),
    (
        b"U" + struct.pack("!II", XID, REL) + b"K" + tuple_data("1") + b"N" + tuple_data("2"),
        Update(XID, REL, ("1",), "K", ("2",)),
    ),
    (
        b"D" + struct.pack("!II", XID, REL) + b"O" + tuple_data("1", None),
        Delete(XID, REL, ("1", None), "O"),
    ),
    (b"T" + struct.pack("!IIBI", XID, 1, 1, REL), Truncate(XID, (REL,), True, False)),
    (
        b"M" + struct.pack("!IBQ", XID, 1, LSN) + cstr("wal2vec") + struct.pack("!I", 0),
        LogicalMessage(XID, True, LSN, "wal2vec", b""),
    ),
]

OUTSIDE_IDS = [type(expected).__name__ for _, expected in OUTSIDE_STREAM]
INSIDE_IDS = [type(expected).__name__ for _, expected in INSIDE_STREAM]

STREAM_START = b"S" + struct.pack("!IB", XID, 1)
STREAM_STOP = b"E"


def streaming_decoder() -> PgOutputDecoder:
    decoder = PgOutputDecoder()
    assert decoder.decode(STREAM_START) == StreamStart(XID, True)
    assert decoder.in_stream
    return decoder


# --- hand-built messages -----------------------------------------------------------------


@pytest.mark.parametrize(("payload", "expected"), OUTSIDE_STREAM, ids=OUTSIDE_IDS)
def test_decodes_each_message_type_outside_a_stream(payload: bytes, expected: Message) -> None:
    decoder = PgOutputDecoder()
    message = decoder.decode(payload)
    assert message == expected
    assert type(message) is type(expected)
    assert not decoder.in_stream


@pytest.mark.parametrize(("payload", "expected"), INSIDE_STREAM, ids=INSIDE_IDS)
def test_messages_inside_a_stream_carry_the_xid(payload: bytes, expected: Message) -> None:
    decoder = streaming_decoder()
    assert decoder.decode(payload) == expected
    assert decoder.decode(STREAM_STOP) == StreamStop()
    assert not decoder.in_stream


def test_change_after_stream_stop_has_no_xid_again() -> None:
    decoder = streaming_decoder()
    decoder.decode(STREAM_STOP)
    assert decoder.decode(insert_msg("1")) == Insert(None, REL, ("1",))


def test_stream_start_of_a_continuing_segment() -> None:
    decoder = PgOutputDecoder()
    assert decoder.decode(b"S" + struct.pack("!IB", XID, 0)) == StreamStart(XID, False)


def test_memoryview_input_decodes_like_bytes() -> None:
    payload = insert_msg("42", "Ünïcødé", None, UNCHANGED_TOAST)
    frame = memoryview(b"w" + bytes(24) + payload)[25:]
    decoded = PgOutputDecoder().decode(frame)
    assert decoded == Insert(None, REL, ("42", "Ünïcødé", None, UNCHANGED_TOAST))


def test_fast_built_changes_equal_normally_built_ones() -> None:
    """Insert/Update/Delete are built around their __init__; they must be the same objects."""
    decoder = PgOutputDecoder()
    for payload, expected in OUTSIDE_STREAM:
        message = decoder.decode(payload)
        if isinstance(message, Insert | Update | Delete):
            assert message == expected
            assert hash(message) == hash(expected)
            assert repr(message) == repr(expected)
            with pytest.raises(AttributeError):
                message.xid = 1  # type: ignore[misc]


def test_empty_text_value_is_an_empty_string_not_null() -> None:
    assert PgOutputDecoder().decode(insert_msg("", None)) == Insert(None, REL, ("", None))


def test_long_text_value() -> None:
    body = "ā" * 20_000
    assert PgOutputDecoder().decode(insert_msg("1", body)).new == ("1", body)  # type: ignore[union-attr]


def test_unchanged_toast_is_a_singleton_marker() -> None:
    assert UnchangedToast() is UNCHANGED_TOAST
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    row = pickle.loads(pickle.dumps(("1", UNCHANGED_TOAST)))
    assert row[1] is UNCHANGED_TOAST


# --- malformed input ---------------------------------------------------------------------


def decode_error(payload: bytes, decoder: PgOutputDecoder | None = None) -> str:
    with pytest.raises(ProtocolError) as info:
        (decoder or PgOutputDecoder()).decode(payload)
    return str(info.value)


@pytest.mark.parametrize(("payload", "expected"), OUTSIDE_STREAM, ids=OUTSIDE_IDS)
def test_every_truncation_is_a_protocol_error(payload: bytes, expected: Message) -> None:
    for cut in range(1, len(payload)):
        if payload[0] == ord("A") and cut == 9:
            continue  # a parallel Stream Abort cut to 8 bytes is a valid plain Stream Abort
        message = decode_error(payload[:cut])
        assert repr(chr(payload[0])) in message, message
        assert re.search(r"at offset \d+", message), message


@pytest.mark.parametrize(("payload", "expected"), OUTSIDE_STREAM, ids=OUTSIDE_IDS)
def test_trailing_bytes_are_a_protocol_error(payload: bytes, expected: Message) -> None:
    message = decode_error(payload + b"\x00")
    assert repr(chr(payload[0])) in message


def test_unknown_type_byte_names_it() -> None:
    message = decode_error(b"Z\x00\x01")
    assert "'Z' (0x5a)" in message
    assert "offset 0" in message


def test_empty_payload() -> None:
    assert "empty" in decode_error(b"")


def test_binary_column_is_refused() -> None:
    message = decode_error(insert_msg("1", b"\x00\x01"))
    assert "binary" in message
    assert "offset 14" in message  # I, relid(4), N, ncols(2), t, len(4), "1" -> the b


def test_unknown_column_kind() -> None:
    payload = b"I" + struct.pack("!I", REL) + b"N" + struct.pack("!H", 1) + b"x"
    assert "unknown column kind 'x'" in decode_error(payload)


def test_text_value_overrunning_the_message() -> None:
    payload = b"I" + struct.pack("!I", REL) + b"N" + struct.pack("!H", 1) + b"t"
    payload += struct.pack("!I", 100) + b"short"
    message = decode_error(payload)
    assert "overruns" in message
    assert "offset 8" in message


def test_invalid_utf8_text_value() -> None:
    payload = b"I" + struct.pack("!I", REL) + b"N" + struct.pack("!H", 1) + b"t"
    payload += struct.pack("!I", 2) + b"\xc3\x28"
    assert "UTF-8" in decode_error(payload)


def test_missing_new_tuple_marker() -> None:
    message = decode_error(b"I" + struct.pack("!I", REL) + b"X" + tuple_data("1"))
    assert "expected 'N'" in message
    assert "offset 5" in message


def test_update_with_old_tuple_but_no_new_tuple() -> None:
    payload = b"U" + struct.pack("!I", REL) + b"K" + tuple_data("1")
    assert "expected 'N'" in decode_error(payload)


def test_delete_needs_an_old_tuple() -> None:
    payload = b"D" + struct.pack("!I", REL) + b"N" + tuple_data("1")
    assert "'K' or 'O'" in decode_error(payload)


def test_stream_abort_with_odd_length() -> None:
    assert "Stream Abort" in decode_error(b"A" + struct.pack("!IIQ", XID, SUBXID, LSN))


def test_truncate_relation_count_mismatch() -> None:
    message = decode_error(b"T" + struct.pack("!IBI", 2, 0, REL))
    assert "2 relation ids" in message


def test_message_content_length_mismatch() -> None:
    payload = b"M" + struct.pack("!BQ", 1, LSN) + cstr("p") + struct.pack("!I", 9) + b"abc"
    assert "content length 9" in decode_error(payload)


def test_unterminated_string() -> None:
    assert "unterminated" in decode_error(b"O" + struct.pack("!Q", LSN) + b"origin")


def test_nested_stream_start_is_refused() -> None:
    decoder = streaming_decoder()
    assert "inside a streamed block" in decode_error(STREAM_START, decoder)


def test_stream_stop_outside_a_stream_is_refused() -> None:
    assert "outside a streamed block" in decode_error(STREAM_STOP)


def test_change_decoded_without_stream_context_is_misread_loudly() -> None:
    """A streamed Insert fed to a decoder that missed Stream Start must not pass silently."""
    with pytest.raises(ProtocolError):
        PgOutputDecoder().decode(insert_msg("1", xid=SUBXID))
