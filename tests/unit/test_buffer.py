"""The buffer: last write wins per row, truncates void earlier changes, limits, drains."""

from __future__ import annotations

from cdc.pipeline.buffer import ChangeBuffer, FlushDecision
from cdc.replication.changes import RowChange, TableTruncate, Transaction
from cdc.replication.lsn import Lsn
from cdc.replication.messages import UNCHANGED_TOAST
from cdc.replication.positions import Position


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
    assert batch.position.lsn == 20 and batch.transactions == 2
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
    assert batch.position.lsn == 10 and batch.rows == [] and batch.oldest_commit_time is None


def in_table(table: str, source_id: str, content: tuple[str, ...] = ("t", "b")) -> RowChange:
    made = change(source_id, content=content)
    made.table = table
    return made


LATENCY = {"public.courses": 1.0, "public.comments": 60.0}


def decide(buffer: ChangeBuffer, now: float):  # type: ignore[no-untyped-def]
    return buffer.flush_decision(now, LATENCY.__getitem__, idle_latency=0.05)


def test_an_empty_buffer_waits_for_something_to_be_added() -> None:
    decision = decide(ChangeBuffer(max_rows=10, max_bytes=10**6), now=0.0)
    assert not decision.drain_all and decision.tables == () and decision.wait == float("inf")


def test_a_table_due_before_the_oldest_goes_alone_and_covers_no_lsn() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, in_table("public.comments", "1"), in_table("public.comments", "2")), 0.0)
    buffer.add(txn(20, in_table("public.courses", "7")), now=5.0)
    waiting = decide(buffer, now=5.5)
    assert not waiting.drain_all and waiting.tables == () and waiting.wait == 0.5
    due = decide(buffer, now=6.0)
    assert not due.drain_all and due.tables == ("public.courses",)
    assert buffer.pending_rows() == {"public.comments": 2, "public.courses": 1}
    partial = buffer.drain_tables(due.tables)
    assert [c.source_id for c in partial.rows] == ["7"] and not partial.complete
    assert partial.oldest_commit_time == 20
    assert buffer.rows == 2 and buffer.oldest_commit_time == 10
    # The comments hold the checkpoint back: when they are due, everything goes.
    assert decide(buffer, now=59.0).wait == 1.0
    assert decide(buffer, now=60.0).drain_all
    full = buffer.drain()
    assert full.complete and full.position.lsn == 20 and len(full.rows) == 2


def test_when_the_oldest_table_is_due_everything_goes() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, in_table("public.courses", "1")), now=0.0)
    buffer.add(txn(20, in_table("public.comments", "1")), now=0.5)
    decision = decide(buffer, now=1.0)
    assert decision.drain_all and decision.tables == ("public.courses",)


def test_a_full_buffer_drains_whatever_is_due() -> None:
    buffer = ChangeBuffer(max_rows=2, max_bytes=10**6)
    buffer.add(txn(10, in_table("public.comments", "1"), in_table("public.comments", "2")), 0.0)
    assert decide(buffer, now=0.0).drain_all


def test_transactions_without_rows_wait_the_idle_latency() -> None:
    buffer = ChangeBuffer(max_rows=10, max_bytes=10**6)
    buffer.add(txn(10), now=0.0)
    assert not decide(buffer, now=0.01).drain_all
    assert decide(buffer, now=0.05).drain_all


# Tables without their own max_latency wait max_age (here 30 s); courses may wait 1 s.
QUIET_LATENCY = {"public.articles": 30.0, "public.courses": 1.0, "public.comments": 60.0}


def decide_quiet(buffer: ChangeBuffer, now: float, quiet_at: float | None) -> FlushDecision:
    return buffer.flush_decision(now, QUIET_LATENCY.__getitem__, 30.0, quiet_at)


def test_a_lone_change_is_due_once_the_stream_is_quiet_not_after_max_age() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, in_table("public.articles", "1")), now=0.0)
    assert decide_quiet(buffer, now=0.0, quiet_at=None).wait == 30.0
    waiting = decide_quiet(buffer, now=0.001, quiet_at=0.003)
    assert not waiting.drain_all and waiting.wait == 0.002
    due = decide_quiet(buffer, now=0.003, quiet_at=0.003)
    assert due.drain_all and due.tables == ("public.articles",)


def test_a_quiet_stream_leaves_tables_that_asked_to_batch_waiting() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, in_table("public.comments", "1")), now=0.0)
    buffer.add(txn(20, in_table("public.courses", "2"), in_table("public.articles", "3")), 1.0)
    # Comments (60 s, longer than max_age) hold the checkpoint back and keep batching; the
    # others are due once quiet and go ahead of them, a partial drain.
    decision = decide_quiet(buffer, now=1.5, quiet_at=1.5)
    assert not decision.drain_all
    assert decision.tables == ("public.courses", "public.articles")
    partial = buffer.drain_tables(decision.tables)
    assert not partial.complete and {c.source_id for c in partial.rows} == {"2", "3"}
    assert decide_quiet(buffer, now=1.5, quiet_at=1.5).wait == 58.5


def test_the_quiet_lowers_deadlines_only_never_raises_them() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, in_table("public.courses", "1")), now=0.0)
    assert decide_quiet(buffer, now=1.0, quiet_at=5.0).drain_all


def test_a_quiet_stream_does_not_hurry_transactions_without_rows() -> None:
    buffer = ChangeBuffer(max_rows=10, max_bytes=10**6)
    buffer.add(txn(10), now=0.0)
    assert not decide_quiet(buffer, now=1.0, quiet_at=0.0).drain_all


def test_a_partial_drain_takes_the_tables_truncate_too() -> None:
    buffer = ChangeBuffer(max_rows=100, max_bytes=10**6)
    buffer.add(txn(10, in_table("public.comments", "1")), now=0.0)
    buffer.add(txn(20, TableTruncate("public.courses", 19, 20)), 1.0)
    buffer.add(txn(30, in_table("public.courses", "2")), now=1.0)
    partial = buffer.drain_tables(["public.courses"])
    assert list(partial.truncated) == ["public.courses"]
    assert [c.source_id for c in partial.rows] == ["2"]
    rest = buffer.drain()
    assert rest.truncated == {} and [c.table for c in rest.rows] == ["public.comments"]


def part(commit_lsn: int, through: int, *changes: RowChange) -> Transaction:
    return Transaction(
        xid=commit_lsn,
        commit_lsn=commit_lsn,
        end_lsn=0,
        commit_time=commit_lsn,
        changes=list(changes),
        through=through,
    )


def test_parts_of_a_large_transaction_move_the_position_inside_it() -> None:
    buffer = ChangeBuffer(max_rows=2, max_bytes=10**6, position=Position(Lsn(10)))
    buffer.add(part(50, 2, change("1"), change("2")), now=0)
    assert buffer.full and buffer.room == 1
    batch = buffer.drain()
    assert batch.position == Position(Lsn(10), Lsn(50), 2)
    assert buffer.room == 2
    buffer.add(part(50, 3, change("3")), now=1)
    assert buffer.drain().position == Position(Lsn(10), Lsn(50), 3)
    # The last part comes with the Commit: the position is the transaction's end.
    buffer.add(txn(60, change("4")), now=2)
    assert buffer.drain().position == Position(Lsn(60))
