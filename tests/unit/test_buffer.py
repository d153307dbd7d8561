"""The buffer: last write wins per row, truncates void earlier changes, limits, drains."""

from __future__ import annotations

from cdc.buffer import ChangeBuffer
from cdc.changes import RowChange, TableTruncate, Transaction
from cdc.pgoutput import UNCHANGED_TOAST


def change(source_id: str, op: str = "update", content=("t", "b"), lsn: int = 1) -> RowChange:
    made = RowChange(
        table="public.a",
        source_id=source_id,
        key=(source_id,),
        op=op,  # type: ignore[arg-type]
        content=None if op == "delete" else content,
        metadata=None if op == "delete" else (),
        commit_lsn=lsn,
        commit_time=lsn,
        size=0,
    )
    made.resize()
    return made


def txn(end_lsn: int, *changes: RowChange | TableTruncate) -> Transaction:
    return Transaction(
        xid=end_lsn,
        commit_lsn=end_lsn - 1,
        end_lsn=end_lsn,
        commit_time=end_lsn,
        changes=list(changes),
    )


def test_last_write_wins_per_row_and_drain_covers_the_last_transaction() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, change("1", content=("a", "1"))), now=0)
    buffer.add(txn(20, change("1", content=("a", "2")), change("2")), now=1)
    assert buffer.rows == 2
    batch = buffer.drain()
    assert batch.end_lsn == 20 and batch.transactions == 2
    assert [(c.source_id, c.content) for c in batch.rows] == [("1", ("a", "2")), ("2", ("t", "b"))]
    assert buffer.empty and buffer.rows == 0 and buffer.bytes == 0


def test_delete_after_insert_leaves_the_delete() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, change("1", "insert"), change("1", "delete")), now=0)
    [only] = buffer.drain().rows
    assert only.op == "delete"


def test_truncate_voids_earlier_changes_of_the_table_but_not_later_ones() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, change("1"), change("2")), now=0)
    buffer.add(txn(20, TableTruncate("public.a", 19, 19), change("3", "insert")), now=0)
    batch = buffer.drain()
    assert list(batch.truncated) == ["public.a"]
    assert [c.source_id for c in batch.rows] == ["3"]


def test_unchanged_toast_is_filled_from_the_rows_previous_state() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, change("1", "insert", content=("title", "long body"))), now=0)
    buffer.add(txn(20, change("1", content=("new title", UNCHANGED_TOAST))), now=0)
    [only] = buffer.drain().rows
    assert only.content == ("new title", "long body")
    assert not only.has_unchanged_toast()


def test_unchanged_toast_stays_when_the_previous_state_is_a_delete() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, change("1", "delete")), now=0)
    buffer.add(txn(20, change("1", content=("x", UNCHANGED_TOAST))), now=0)
    [only] = buffer.drain().rows
    assert only.has_unchanged_toast()


def test_full_by_rows_and_by_bytes_and_a_big_transaction_is_never_split() -> None:
    by_rows = ChangeBuffer(max_rows=3, max_bytes=10**9)
    by_rows.add(txn(10, *(change(str(i)) for i in range(5))), now=0)
    assert by_rows.full and by_rows.rows == 5
    by_bytes = ChangeBuffer(max_rows=10**6, max_bytes=2000)
    by_bytes.add(txn(10, change("1", content=("x" * 3000, None))), now=0)
    assert by_bytes.full
    assert by_bytes.bytes >= 3000


def test_age_counts_from_the_first_transaction_added() -> None:
    buffer = ChangeBuffer(max_rows=10, max_bytes=10**6)
    assert buffer.age(now=100.0) == 0.0
    buffer.add(txn(10, change("1")), now=100.0)
    buffer.add(txn(20, change("2")), now=105.0)
    assert buffer.age(now=107.5) == 7.5
    assert buffer.oldest_commit_time == 10
    buffer.drain()
    assert buffer.age(now=200.0) == 0.0 and buffer.oldest_commit_time is None


def test_empty_transactions_still_move_the_covered_lsn() -> None:
    buffer = ChangeBuffer(max_rows=10, max_bytes=10**6)
    buffer.add(txn(10), now=0)
    assert not buffer.empty
    batch = buffer.drain()
    assert batch.end_lsn == 10 and batch.rows == [] and batch.oldest_commit_time is None
