"""CopyData frames of the streaming replication protocol, and PostgreSQL timestamps.

During START_REPLICATION the server sends `w` (XLogData, carrying one pgoutput message) and
`k` (primary keepalive) frames; the client answers with `r` (standby status update) frames.
This module only converts between those bytes and small frozen dataclasses; the connection
itself belongs to `cdc.replication.stream`. All integers are big-endian; timestamps are microseconds
since 2000-01-01 00:00 UTC, the PostgreSQL epoch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cdc.errors import ProtocolError
from cdc.replication.lsn import Lsn

__all__ = [
    "PG_EPOCH",
    "Keepalive",
    "XLogData",
    "encode_standby_status",
    "parse_frame",
    "pg_epoch_us",
    "pg_timestamp",
]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

_XLOGDATA: Final = struct.Struct("!QQq")  # wal_start, wal_end, send_time
_KEEPALIVE: Final = struct.Struct("!QqB")  # wal_end, send_time, reply_requested
_STANDBY_STATUS: Final = struct.Struct("!cQQQqB")  # 'r', write, flush, apply, clock, reply
_XLOGDATA_HEADER: Final = 1 + _XLOGDATA.size
_KEEPALIVE_SIZE: Final = 1 + _KEEPALIVE.size


@dataclass(frozen=True, slots=True)
class XLogData:
    """A `w` frame: WAL from `wal_start`; `payload` is one pgoutput message."""

    wal_start: Lsn
    wal_end: Lsn
    send_time: int
    payload: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A `k` frame: the server's current WAL end; reply now if `reply_requested`."""

    wal_end: Lsn
    send_time: int
    reply_requested: bool


def _describe(data: bytes | memoryview) -> str:
    """What was received, for error messages: length and the first bytes in hex."""
    head = bytes(data[:16]).hex()
    return f"{len(data)} bytes, starting {head}{'...' if len(data) > 16 else ''}"


def parse_frame(data: bytes | memoryview) -> XLogData | Keepalive:
    """Parse one CopyData frame received during START_REPLICATION.

    The XLogData payload is a slice of `data`: a zero-copy view when `data` is a memoryview
    (as psycopg returns it), so it is only valid as long as the caller keeps `data` unchanged.
    """
    if not data:
        raise ProtocolError("empty replication frame")
    kind = data[0]
    if kind == 0x77:  # 'w'
        if len(data) < _XLOGDATA_HEADER:
            raise ProtocolError(f"truncated XLogData frame: {_describe(data)}")
        wal_start, wal_end, send_time = _XLOGDATA.unpack_from(data, 1)
        return XLogData(Lsn(wal_start), Lsn(wal_end), send_time, data[_XLOGDATA_HEADER:])
    if kind == 0x6B:  # 'k'
        if len(data) != _KEEPALIVE_SIZE:
            raise ProtocolError(
                f"keepalive frame must be {_KEEPALIVE_SIZE} bytes: {_describe(data)}"
            )
        wal_end, send_time, reply = _KEEPALIVE.unpack_from(data, 1)
        return Keepalive(Lsn(wal_end), send_time, reply != 0)
    raise ProtocolError(
        f"unknown replication frame type {chr(kind)!r} (0x{kind:02x}): {_describe(data)}"
    )


XLOGDATA_HEADER: Final = _XLOGDATA_HEADER


def is_xlogdata(data: bytes | memoryview) -> bool:
    """Whether a frame is XLogData: the stream's hot path skips `parse_frame` for those."""
    return len(data) >= _XLOGDATA_HEADER and data[0] == 0x77


def xlogdata_wal_end(data: bytes | memoryview) -> Lsn:
    """The server's WAL end carried in an XLogData frame's header."""
    return Lsn(_XLOGDATA.unpack_from(data, 1)[1])


def encode_standby_status(
    write_lsn: Lsn, flush_lsn: Lsn, apply_lsn: Lsn, now_us: int, reply_requested: bool = False
) -> bytes:
    """Build the `r` standby status update frame.

    `flush_lsn` is what the server may release WAL up to (confirmed_flush_lsn of the slot);
    `now_us` is the client clock in microseconds since the PostgreSQL epoch.
    """
    try:
        return _STANDBY_STATUS.pack(
            b"r", write_lsn, flush_lsn, apply_lsn, now_us, 1 if reply_requested else 0
        )
    except struct.error as exc:
        # Negative or > 64-bit LSNs are a bug upstream; say which values, not just "out of range".
        raise ValueError(
            f"standby status values out of range: write={write_lsn} flush={flush_lsn}"
            f" apply={apply_lsn} now_us={now_us}"
        ) from exc


def pg_epoch_us(moment: datetime) -> int:
    """Microseconds since 2000-01-01 UTC for an aware datetime (exact, no float rounding)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: give it a timezone")
    return (moment - PG_EPOCH) // _MICROSECOND


def pg_timestamp(us: int) -> datetime:
    """The UTC datetime for microseconds since the PostgreSQL epoch."""
    return PG_EPOCH + timedelta(microseconds=us)
