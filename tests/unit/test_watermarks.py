"""Watermark windows: a chunk read enters the stream at its high mark, minus what the window saw."""

from __future__ import annotations

from cdc.replication.changes import RowChange, TableTruncate, Transaction
from cdc.sink.progress import ResyncPosition
from cdc.source.watermarks import ChunkRead, ReadRow, Windows, decode_mark, encode_mark

TABLE = "public.articles"


def mark_txn(session: str, chunk: int, edge: str, lsn: int) -> Transaction:
    content = encode_mark(session, chunk, edge).encode()  # type: ignore[arg-type]
    return Transaction(xid=lsn, commit_lsn=lsn, end_lsn=lsn + 1, commit_time=lsn, changes=[],
                       marks=[content])  # fmt: skip


def change(source_id: str, op: str = "update", table: str = TABLE) -> RowChange:
    return RowChange(table, source_id, (source_id,), op, ("x",), (), 0, 0, 0)  # type: ignore[arg-type]


def txn(lsn: int, *changes: RowChange | TableTruncate) -> Transaction:
    return Transaction(lsn, lsn, lsn + 1, lsn, list(changes))


def read(chunk: int, ids: list[str], absent: list[str] | None = None) -> ChunkRead:
    return ChunkRead(
        chunk=chunk,
        table=TABLE,
        present=[ReadRow(i, (i,), (f"content {i}",), ()) for i in ids],
        absent=[(i, (i,)) for i in absent or []],
        position=ResyncPosition(TABLE, "rows", (ids[-1],) if ids else None, None, len(ids)),
    )


def test_marks_round_trip_and_foreign_content_is_ignored() -> None:
    assert decode_mark(encode_mark("s1", 7, "high").encode()) == ("s1", 7, "high")
    assert decode_mark(b"not a mark") is None
    assert decode_mark(b"s:1:middle") is None
    assert decode_mark(b"\xff\xfe") is None


def test_rows_changed_inside_the_window_are_left_to_the_stream() -> None:
    windows = Windows("s")
    windows.opening(1, TABLE)
    assert windows.observe(mark_txn("s", 1, "low", 10)) == []
    assert windows.active
    windows.observe(txn(11, change("2"), change("9", table="public.other")))
    windows.observe(txn(12, change("4", op="delete")))
    windows.expect(read(1, ["1", "2", "3", "4", "9"]))
    [landed] = windows.observe(mark_txn("s", 1, "high", 13))
    assert [(c.source_id, c.op, c.commit_lsn) for c in landed.changes] == [
        ("1", "update", 13),
        ("3", "update", 13),
        ("9", "update", 13),  # touched only in another table
    ]
    assert landed.changes[0].content == ("content 1",)
    assert landed.changes[0].size > 0
    assert not windows.active


def test_changes_before_the_low_mark_do_not_count() -> None:
    windows = Windows("s")
    windows.opening(1, TABLE)
    windows.observe(txn(5, change("1")))  # committed before the low mark
    windows.observe(mark_txn("s", 1, "low", 10))
    windows.expect(read(1, ["1"]))
    [landed] = windows.observe(mark_txn("s", 1, "high", 11))
    assert [c.source_id for c in landed.changes] == ["1"]


def test_absent_rows_become_deletes_unless_touched() -> None:
    windows = Windows("s")
    windows.opening(3, TABLE)
    windows.observe(mark_txn("s", 3, "low", 10))
    windows.observe(txn(11, change("8")))  # re-inserted meanwhile: the stream has it
    windows.expect(read(3, [], absent=["7", "8"]))
    [landed] = windows.observe(mark_txn("s", 3, "high", 12))
    assert [(c.source_id, c.op) for c in landed.changes] == [("7", "delete")]


def test_a_truncate_inside_the_window_voids_the_read_but_not_its_position() -> None:
    windows = Windows("s")
    windows.opening(1, TABLE)
    windows.observe(mark_txn("s", 1, "low", 10))
    windows.observe(txn(11, TableTruncate(TABLE, 0, 0)))
    windows.expect(read(1, ["1", "2"]))
    [landed] = windows.observe(mark_txn("s", 1, "high", 12))
    assert landed.changes == []
    assert landed.read.position.last_key == ("2",)


def test_marks_of_another_session_or_an_abandoned_chunk_are_ignored() -> None:
    windows = Windows("s")
    windows.opening(1, TABLE)
    assert windows.observe(mark_txn("old-session", 1, "low", 10)) == []
    assert not windows.active
    windows.observe(mark_txn("s", 1, "low", 11))
    windows.abandon(1)
    assert windows.observe(mark_txn("s", 1, "high", 12)) == []
    assert not windows.active
