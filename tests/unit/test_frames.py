"""Tests for the replication CopyData frame codec and the PostgreSQL timestamp helpers."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cdc.errors import ProtocolError
from cdc.replication.frames import (
    PG_EPOCH,
    Keepalive,
    XLogData,
    encode_standby_status,
    parse_frame,
    pg_epoch_us,
    pg_timestamp,
)

WAL_START = 0x0000_0001_6B37_4D48
WAL_END = 0x0000_0001_6B37_5000
SEND_TIME = 802_051_200_123_456


def xlogdata(payload: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", WAL_START, WAL_END, SEND_TIME) + payload


def keepalive(reply: int) -> bytes:
    return b"k" + struct.pack("!QqB", WAL_END, SEND_TIME, reply)


def test_parse_xlogdata() -> None:
    frame = parse_frame(xlogdata(b"B\x01\x02"))
    assert frame == XLogData(WAL_START, WAL_END, SEND_TIME, b"B\x01\x02")


def test_xlogdata_payload_is_a_view_of_a_memoryview_frame() -> None:
    raw = bytearray(xlogdata(b"Ixyz"))
    frame = parse_frame(memoryview(raw))
    assert isinstance(frame, XLogData)
    assert isinstance(frame.payload, memoryview)
    assert bytes(frame.payload) == b"Ixyz"
    raw[-1] = ord("Z")  # a view, not a copy: this is what makes it zero-copy
    assert bytes(frame.payload) == b"IxyZ"


def test_xlogdata_with_empty_payload() -> None:
    frame = parse_frame(xlogdata(b""))
    assert isinstance(frame, XLogData)
    assert frame.payload == b""


@pytest.mark.parametrize(("reply", "expected"), [(0, False), (1, True)])
def test_parse_keepalive(reply: int, expected: bool) -> None:
    assert parse_frame(keepalive(reply)) == Keepalive(WAL_END, SEND_TIME, expected)


def test_parse_keepalive_from_memoryview() -> None:
    assert parse_frame(memoryview(keepalive(1))) == Keepalive(WAL_END, SEND_TIME, True)


def test_unknown_frame_type_says_what_arrived() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(b"Q\x00\x01\x02")
    message = str(info.value)
    assert "'Q' (0x51)" in message
    assert "4 bytes" in message
    assert "51000102" in message


def test_empty_frame() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        parse_frame(b"")


@pytest.mark.parametrize("cut", range(1, 25))
def test_truncated_xlogdata(cut: int) -> None:
    with pytest.raises(ProtocolError, match=rf"truncated XLogData frame: {cut} bytes"):
        parse_frame(xlogdata(b"")[:cut])


@pytest.mark.parametrize("size", [1, 10, 17, 19, 30])
def test_keepalive_of_wrong_size(size: int) -> None:
    frame = (keepalive(0) + b"\0" * 20)[:size]
    with pytest.raises(ProtocolError, match=rf"keepalive frame must be 18 bytes: {size} bytes"):
        parse_frame(frame)


def test_encode_standby_status_layout() -> None:
    message = encode_standby_status(1, 2, 3, 4, reply_requested=True)
    assert message == b"r" + struct.pack("!QQQqB", 1, 2, 3, 4, 1)
    assert len(message) == 34


def test_encode_standby_status_round_trip() -> None:
    message = encode_standby_status(WAL_END, WAL_START, WAL_START - 1, SEND_TIME)
    kind, write, flush, apply, clock, reply = struct.unpack("!cQQQqB", message)
    assert (kind, write, flush, apply, clock, reply) == (
        b"r",
        WAL_END,
        WAL_START,
        WAL_START - 1,
        SEND_TIME,
        0,
    )


def test_encode_standby_status_accepts_the_largest_lsn() -> None:
    top = 2**64 - 1
    assert struct.unpack_from("!Q", encode_standby_status(top, top, top, 0), 1) == (top,)


@pytest.mark.parametrize("lsn", [-1, 2**64])
def test_encode_standby_status_rejects_out_of_range_lsn(lsn: int) -> None:
    with pytest.raises(ValueError, match=f"flush={lsn}"):
        encode_standby_status(0, lsn, 0, 0)


def test_timestamp_epoch() -> None:
    assert datetime(2000, 1, 1, tzinfo=UTC) == PG_EPOCH
    assert pg_epoch_us(PG_EPOCH) == 0
    assert pg_timestamp(0) == PG_EPOCH


def test_timestamp_known_value() -> None:
    moment = datetime(2025, 6, 1, 0, 0, 0, 123_456, tzinfo=UTC)
    assert pg_epoch_us(moment) == SEND_TIME
    assert pg_timestamp(SEND_TIME) == moment
    assert pg_timestamp(SEND_TIME).tzinfo is UTC


def test_timestamp_before_the_epoch_is_negative() -> None:
    assert pg_epoch_us(datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)) == -1_000_000
    assert pg_timestamp(-1) == PG_EPOCH - timedelta(microseconds=1)


def test_timestamp_respects_the_timezone() -> None:
    tehran = timezone(timedelta(hours=3, minutes=30))
    assert pg_epoch_us(datetime(2000, 1, 1, 3, 30, tzinfo=tehran)) == 0


@pytest.mark.parametrize("us", [1, 999_999, 86_400_000_001, 2**40 + 7, -(2**40) - 3])
def test_timestamp_round_trip_is_exact(us: int) -> None:
    assert pg_epoch_us(pg_timestamp(us)) == us


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        pg_epoch_us(datetime(2025, 1, 1))


GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.frames")), ids=lambda p: p.stem)
def test_every_captured_frame_parses(path: Path) -> None:
    """Frames captured from PostgreSQL 18: only `w` and `k`, all well-formed, times sane."""
    data, pos = path.read_bytes(), 0
    manifest = json.loads(path.with_suffix(".json").read_text())
    counts = {XLogData: 0, Keepalive: 0}
    while pos < len(data):
        (length,) = struct.unpack_from("!I", data, pos)
        frame = parse_frame(memoryview(data)[pos + 4 : pos + 4 + length])
        pos += 4 + length
        counts[type(frame)] += 1
        assert pg_timestamp(frame.send_time).year >= 2025
        if isinstance(frame, XLogData):
            assert frame.wal_start == frame.wal_end  # pgoutput frames carry one position
            assert len(frame.payload) >= 1
        else:
            assert frame.wal_end > 0
    assert counts[XLogData] == manifest["xlogdata_frames"]
    assert counts[Keepalive] == manifest["keepalive_frames"]
