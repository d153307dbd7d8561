"""Tests for the pgoutput decoder: hand-built messages for every type and edge case, then the
golden frames captured from a real PostgreSQL 18 (see tests/unit/golden/capture.py)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import pickle
import re
import struct
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cdc.errors import ProtocolError
from cdc.replication.frames import XLogData, parse_frame, pg_timestamp
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
from cdc.replication.pgoutput import PgOutputDecoder

M = TypeVar("M")

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


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"B" + struct.pack("!QqI", LSN, -1, XID), Begin(LSN, -1, XID)),
        (
            b"P" + struct.pack("!BQQqI", 0, LSN, END_LSN, -TS, XID) + cstr("g"),
            Prepare(0, LSN, END_LSN, -TS, XID, "g"),
        ),
        (
            b"r" + struct.pack("!BQQqqI", 0, LSN, END_LSN, -2, -1, XID) + cstr("g"),
            RollbackPrepared(0, LSN, END_LSN, -2, -1, XID, "g"),
        ),
        (
            b"A" + struct.pack("!IIQq", XID, SUBXID, 2**64 - 1, -TS),
            StreamAbort(XID, SUBXID, 2**64 - 1, -TS),
        ),
    ],
)
def test_timestamps_are_signed_and_lsns_unsigned(payload: bytes, expected: Message) -> None:
    """Times before 2000-01-01 are negative on the wire; LSNs use all 64 bits."""
    assert PgOutputDecoder().decode(payload) == expected


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


# --- golden frames from PostgreSQL 18 ------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_NAMES = sorted(path.stem for path in GOLDEN.glob("*.frames"))
TYPE_BYTES: dict[type, str] = {
    Begin: "B",
    Commit: "C",
    Origin: "O",
    Relation: "R",
    TypeInfo: "Y",
    Insert: "I",
    Update: "U",
    Delete: "D",
    Truncate: "T",
    LogicalMessage: "M",
    StreamStart: "S",
    StreamStop: "E",
    StreamCommit: "c",
    StreamAbort: "A",
    BeginPrepare: "b",
    Prepare: "P",
    CommitPrepared: "K",
    RollbackPrepared: "r",
    StreamPrepare: "p",
}


def read_frames(name: str) -> list[bytes]:
    """The length-prefixed frames of one golden file."""
    data = (GOLDEN / f"{name}.frames").read_bytes()
    frames, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("!I", data, pos)
        frames.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    assert pos == len(data), f"{name}: trailing bytes"
    return frames


def manifest(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return result


@functools.cache
def golden(name: str) -> tuple[tuple[XLogData, Message], ...]:
    """(frame, message) for every XLogData frame of the file, end marker dropped."""
    decoder = PgOutputDecoder()
    decoded = []
    for frame in read_frames(name):
        parsed = parse_frame(memoryview(frame))  # as psycopg hands frames out
        if isinstance(parsed, XLogData):
            decoded.append((parsed, decoder.decode(parsed.payload)))
    assert not decoder.in_stream
    _, marker = decoded.pop()
    assert isinstance(marker, LogicalMessage)
    content = manifest(name)["end_marker"]["content"].encode()
    assert marker == LogicalMessage(None, False, marker.lsn, "golden-end", content)
    return tuple(decoded)


def messages(name: str) -> list[Message]:
    return [message for _, message in golden(name)]


def of_type(name: str, kind: type[M]) -> list[M]:
    return [message for message in messages(name) if isinstance(message, kind)]


def relation_named(name: str, table: str) -> Relation:
    """The first Relation message for `table` in the golden file."""
    return next(r for r in of_type(name, Relation) if r.name == table)


def test_golden_files_exist() -> None:
    assert len(GOLDEN_NAMES) >= 19
    assert {"crud", "toast", "stream_subxact_abort", "stream_abort_parallel"} <= set(GOLDEN_NAMES)
    size = sum(path.stat().st_size for path in GOLDEN.iterdir())
    assert size < 1_500_000


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_stream_has_the_shape_its_manifest_promises(name: str) -> None:
    info = manifest(name)
    frames = read_frames(name)
    assert len(frames) == info["frames"]
    assert sum(frame[:1] == b"w" for frame in frames) == info["xlogdata_frames"]
    shape = "".join(TYPE_BYTES[type(message)] for message in messages(name))
    assert re.fullmatch(info["pattern"].replace(" ", ""), shape), shape


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_transactions_are_consistent(name: str) -> None:
    """Begin/Commit pair up on LSN and time; changes outside streams carry no xid; changes
    inside a stream block carry the block's xid or one of its subtransactions' xids."""
    begin: Begin | None = None
    stream: StreamStart | None = None
    for frame, message in golden(name):
        if isinstance(message, Begin):
            assert begin is None and stream is None
            begin = message
        elif isinstance(message, Commit):
            assert begin is not None
            assert (message.commit_lsn, message.commit_time) == (begin.final_lsn, begin.commit_time)
            assert message.end_lsn > message.commit_lsn
            assert frame.wal_start == message.end_lsn  # the frame is positioned at the txn end
            begin = None
        elif isinstance(message, StreamStart):
            stream = message
        elif isinstance(message, StreamStop):
            stream = None
        elif isinstance(message, StreamCommit | StreamAbort | StreamPrepare):
            assert stream is None
        elif isinstance(message, Insert | Update | Delete | Relation | TypeInfo | Truncate):
            if stream is None:
                assert message.xid is None
            else:
                assert message.xid is not None and message.xid >= stream.xid
        if isinstance(message, Relation | TypeInfo):
            assert frame.wal_start == 0  # schema messages are not positioned in the WAL
    assert begin is None and stream is None


def test_golden_crud() -> None:
    begin, relation, *inserts, commit = messages("crud")[:6]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert isinstance(relation, Relation)
    rel = relation.relation_id
    assert relation == Relation(
        None,
        rel,
        "public",
        "articles",
        "d",
        (
            RelationColumn("id", 20, -1, True),
            RelationColumn("title", 25, -1, False),
            RelationColumn("body", 25, -1, False),
            RelationColumn("author_id", 23, -1, False),
        ),
    )
    assert inserts == [
        Insert(None, rel, ("1", "First", "Body one", "7")),
        Insert(None, rel, ("2", "Second", "Body two", None)),
        Insert(None, rel, ("3", "Third", "", "9")),
    ]
    assert of_type("crud", Update) == [
        Update(None, rel, None, None, ("1", "First, edited", "Body one", "7"))
    ]
    assert of_type("crud", Delete) == [Delete(None, rel, ("3", None, None, None), "K")]
    xids = [b.xid for b in of_type("crud", Begin)]
    assert len(set(xids)) == 3 and xids == sorted(xids)


def test_golden_toast_update_sends_unchanged_marker() -> None:
    notes = manifest("toast")["notes"]
    (insert,) = of_type("toast", Insert)
    body = insert.new[2]
    assert isinstance(body, str)
    assert len(body) == notes["body_length"] == 12_288
    assert hashlib.sha256(body.encode()).hexdigest() == notes["body_sha256"]
    title_only, author_only = of_type("toast", Update)
    assert title_only.new == ("1", "Big, renamed", UNCHANGED_TOAST, "1")
    assert title_only.new[2] is UNCHANGED_TOAST
    assert author_only.new == ("1", "Big, renamed", UNCHANGED_TOAST, "2")
    assert title_only.old is None and title_only.old_kind is None
    assert of_type("toast", Delete)[0].old == ("1", None, None, None)


def test_golden_primary_key_change_sends_the_old_key() -> None:
    (update,) = of_type("pk_change", Update)
    assert update.old_kind == "K"
    assert update.old == ("1", None, None, None)
    assert update.new == ("100", "Rekeyed", "Body", "5")


def test_golden_replica_identity_full() -> None:
    relation = relation_named("replica_identity_full", "full_identity")
    assert relation.replica_identity == "f"
    assert [c.is_key for c in relation.columns] == [True, True, True, True]
    (update,) = of_type("replica_identity_full", Update)
    assert (update.old_kind, update.old) == ("O", ("1", "Full", "Body", None))
    assert update.new == ("1", "Full, edited", "Body", None)
    (delete,) = of_type("replica_identity_full", Delete)
    assert (delete.old_kind, delete.old) == ("O", ("1", "Full, edited", "Body", None))


def test_golden_composite_key() -> None:
    relation = relation_named("composite_key", "translations")
    assert [(c.name, c.type_oid, c.is_key) for c in relation.columns] == [
        ("lang", 25, True),
        ("id", 23, True),
        ("title", 25, False),
    ]
    assert [i.new for i in of_type("composite_key", Insert)] == [
        ("en", "42", "Hello"),
        ("fa", "42", "سلام"),
    ]
    plain, rekey = of_type("composite_key", Update)
    assert (plain.old, plain.new) == (None, ("en", "42", "Hello, world"))
    assert (rekey.old_kind, rekey.old, rekey.new) == (
        "K",
        ("en", "42", None),
        ("de", "42", "Hallo"),
    )
    assert of_type("composite_key", Delete)[0].old == ("fa", "42", None)


def test_golden_truncate_flags() -> None:
    ids = {r.name: r.relation_id for r in of_type("truncate", Relation)}
    a, b, c = ids["trunc_a"], ids["trunc_b"], ids["trunc_c"]
    assert of_type("truncate", Truncate) == [
        Truncate(None, (a, b, c), True, True),  # CASCADE pulled in trunc_c
        Truncate(None, (b,), False, False),
        Truncate(None, (a, c), True, False),
    ]


def test_golden_logical_messages() -> None:
    begin, transactional, commit, immediate, binary = messages("messages")
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert isinstance(transactional, LogicalMessage)
    assert isinstance(immediate, LogicalMessage) and isinstance(binary, LogicalMessage)
    assert transactional == LogicalMessage(None, True, transactional.lsn, "wal2vec", b"hello")
    assert immediate == LogicalMessage(None, False, immediate.lsn, "wal2vec", b"immediate")
    assert binary == LogicalMessage(None, False, binary.lsn, "wal2vec", b"\x00\xff\n")
    assert begin.final_lsn <= immediate.lsn < binary.lsn


def test_golden_rolled_back_transaction_leaves_nothing() -> None:
    assert messages("rollback") == []
    assert manifest("rollback")["xlogdata_frames"] == 1  # just the end marker


def test_golden_small_savepoint_rollback_just_drops_the_rows() -> None:
    assert [i.new for i in of_type("savepoint_small", Insert)] == [
        ("10", "kept before"),
        ("12", "kept after"),
    ]
    assert of_type("savepoint_small", StreamAbort) == []


def ids_of(inserts: list[Insert]) -> list[int]:
    return [int(str(insert.new[0])) for insert in inserts]


def test_golden_streamed_commit() -> None:
    starts = of_type("stream_commit", StreamStart)
    assert len(starts) >= 2
    assert starts[0].first_segment and not any(s.first_segment for s in starts[1:])
    xid = starts[0].xid
    assert {s.xid for s in starts} == {xid}
    inserts = of_type("stream_commit", Insert)
    assert ids_of(inserts) == list(range(1, 251))
    assert {i.xid for i in inserts} == {xid}
    assert inserts[0].new == ("1", "bulk 1", "lorem ipsum " * 16 + "1", "1")
    (relation,) = of_type("stream_commit", Relation)
    assert relation.xid == xid and relation.name == "bulk"
    (commit,) = of_type("stream_commit", StreamCommit)
    assert commit.xid == xid and commit.end_lsn > commit.commit_lsn
    assert of_type("stream_commit", Begin) == []
    assert of_type("stream_commit", Commit) == []


def test_golden_streamed_abort() -> None:
    (start, *_) = of_type("stream_abort", StreamStart)
    (abort,) = of_type("stream_abort", StreamAbort)
    assert abort == StreamAbort(start.xid, start.xid, None, None)
    ids = ids_of(of_type("stream_abort", Insert))
    assert ids == list(range(1001, 1001 + len(ids)))


def test_golden_streamed_abort_parallel_carries_lsn_and_time() -> None:
    (abort,) = of_type("stream_abort_parallel", StreamAbort)
    (plain,) = of_type("stream_abort", StreamAbort)
    assert (abort.xid, abort.subxid) == (plain.xid, plain.subxid)  # same WAL, another slot
    assert abort.abort_lsn is not None and abort.abort_time is not None
    stop_frame = [f for f, m in golden("stream_abort_parallel") if isinstance(m, StreamStop)][-1]
    # The capture waited for the block before rolling back: the abort is later on both clocks.
    assert abort.abort_lsn > stop_frame.wal_start
    assert abort.abort_time > stop_frame.send_time
    assert pg_timestamp(abort.abort_time).year >= 2025


def test_golden_subtransaction_abort_inside_a_stream() -> None:
    name = "stream_subxact_abort"
    top = of_type(name, StreamStart)[0].xid
    (abort,) = of_type(name, StreamAbort)
    assert abort.xid == top
    assert abort.subxid != abort.xid
    inserts = of_type(name, Insert)
    by_xid: dict[int | None, list[int]] = {}
    for insert in inserts:
        by_xid.setdefault(insert.xid, []).append(ids_of([insert])[0])
    # Changes carry the xid of the (sub)transaction that made them, not the top-level xid.
    assert by_xid[top] == list(range(2001, 2251))
    rolled_back = by_xid[abort.subxid]
    assert rolled_back == list(range(3001, 3001 + len(rolled_back))) and rolled_back
    # ROLLBACK TO re-establishes the savepoint: the last row comes from yet another subxact.
    assert set(by_xid) == {top, abort.subxid, inserts[-1].xid}
    assert by_xid[inserts[-1].xid] == [4001]
    assert inserts[-1].xid not in (top, abort.subxid)
    # pgoutput forgets the relations it sent after an abort, so it sends one again.
    relations = of_type(name, Relation)
    assert [r.xid for r in relations] == [top, inserts[-1].xid]
    (commit,) = of_type(name, StreamCommit)
    assert commit.xid == top
    kept = [i for i in inserts if i.xid != abort.subxid]
    assert ids_of(kept) == [*range(2001, 2251), 4001]


def test_golden_enum_type_message() -> None:
    (type_info,) = of_type("enum_type", TypeInfo)
    relation = relation_named("enum_type", "moods")
    assert type_info == TypeInfo(None, relation.columns[1].type_oid, "public", "mood")
    assert type_info.type_oid >= 16_384  # a user type, not a built-in
    assert [i.new for i in of_type("enum_type", Insert)] == [("1", "curious"), ("2", None)]


def test_golden_mixed_case_names_are_exact() -> None:
    relation = relation_named("mixed_case", "BlogPosts")
    assert relation.namespace == "Content"
    assert [c.name for c in relation.columns] == ["Id", "Title", "bodyText"]
    assert of_type("mixed_case", Update)[0].new == ("1", "CASE", "Sensitive")


def test_golden_unicode_text() -> None:
    assert [i.new for i in of_type("unicode", Insert)] == [
        ("1", "سلام دنیا", "این یک متن فارسی است.", "1"),
        ("2", "你好，世界", "这是一段中文文本。", "2"),
        ("3", "🚀 launch 🎉", "mixed: ñ ü ß 👩\u200d💻 👍🏽", "3"),
    ]
    assert of_type("unicode", Update)[0].new[1] == "درود 🌍"


def test_golden_origin() -> None:
    begin, origin, *_ = messages("origin")
    assert isinstance(begin, Begin)
    assert origin == Origin(0xABCDEF, "golden_origin")


def test_golden_prepared_transactions_without_two_phase() -> None:
    """Without two_phase a prepared transaction appears at COMMIT PREPARED as a normal one;
    the rolled-back one never appears; the large one is streamed and ends in Stream Commit."""
    inserts = of_type("two_phase", Insert)
    assert inserts[0].new == ("1", "prepared then committed", "", "1")
    assert "2" not in {i.new[0] for i in inserts}
    (commit,) = of_type("two_phase", StreamCommit)
    assert commit.xid == of_type("two_phase", StreamStart)[0].xid


def test_golden_two_phase_messages() -> None:
    name = "two_phase_decoded"
    begin1, begin2 = of_type(name, BeginPrepare)
    prepare1, prepare2 = of_type(name, Prepare)
    committed1, committed3 = of_type(name, CommitPrepared)
    (rolled_back,) = of_type(name, RollbackPrepared)
    (stream_prepare,) = of_type(name, StreamPrepare)
    assert (begin1.gid, begin2.gid, stream_prepare.gid) == ("g1", "g2", "g3")
    assert (prepare1.xid, prepare1.gid, prepare1.prepare_lsn) == (
        begin1.xid,
        "g1",
        begin1.prepare_lsn,
    )
    assert prepare1.end_lsn == begin1.end_lsn
    assert (committed1.xid, committed1.gid) == (begin1.xid, "g1")
    assert (rolled_back.xid, rolled_back.gid) == (begin2.xid, "g2")
    assert rolled_back.prepare_end_lsn == prepare2.end_lsn
    assert rolled_back.prepare_time == prepare2.prepare_time < rolled_back.rollback_time
    assert stream_prepare.xid == of_type(name, StreamStart)[0].xid == committed3.xid
    assert committed3.gid == "g3"
    # Inside Begin Prepare .. Prepare changes are not streamed, so they carry no xid.
    assert of_type(name, Insert)[0] == Insert(
        None, of_type(name, Relation)[0].relation_id, ("1", "prepared then committed", "", "1")
    )


def test_golden_decoding_bytes_and_memoryview_agree() -> None:
    by_view = messages("stream_subxact_abort")
    decoder = PgOutputDecoder()
    by_bytes = [
        decoder.decode(frame[25:])
        for frame in read_frames("stream_subxact_abort")
        if frame[:1] == b"w"
    ][:-1]
    assert by_bytes == by_view
