"""Transaction assembly: plain and streamed transactions, aborts, savepoints, key changes."""

from __future__ import annotations

import pytest

from cdc.config import TableConfig
from cdc.errors import ConfigError, ProtocolError
from cdc.replication.changes import RowChange, TableTruncate
from cdc.replication.messages import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from cdc.replication.transactions import TransactionAssembler

ARTICLES = TableConfig(table="public.articles", columns=["title", "body"], metadata=["author_id"])
RELATION = Relation(
    xid=None,
    relation_id=16384,
    namespace="public",
    name="articles",
    replica_identity="d",
    columns=(
        RelationColumn("id", 20, -1, True),
        RelationColumn("title", 25, -1, False),
        RelationColumn("body", 25, -1, False),
        RelationColumn("author_id", 23, -1, False),
    ),
)
OTHER = Relation(None, 99, "public", "unrelated", "d", (RelationColumn("id", 23, -1, True),))


def assembler() -> TransactionAssembler:
    a = TransactionAssembler({"public.articles": ARTICLES})
    a.feed(RELATION)
    a.feed(OTHER)
    return a


def row(id_: str, title: str | None = "t", body: object = "b", author: str | None = "7"):
    return (id_, title, body, author)


def test_plain_transaction_yields_changes_at_commit_with_its_lsns() -> None:
    a = assembler()
    assert a.feed(Begin(final_lsn=500, commit_time=10, xid=7)) is None
    assert a.feed(Insert(None, 16384, row("1"))) is None
    assert not a.idle
    txn = a.feed(Commit(0, commit_lsn=500, end_lsn=560, commit_time=10))
    assert txn is not None and a.idle
    assert (txn.xid, txn.commit_lsn, txn.end_lsn) == (7, 500, 560)
    [change] = txn.changes
    assert isinstance(change, RowChange)
    assert (change.source_id, change.op, change.content, change.metadata) == (
        "1",
        "insert",
        ("t", "b"),
        ("7",),
    )
    assert change.commit_lsn == 500


def test_changes_of_unconfigured_tables_are_dropped() -> None:
    a = assembler()
    a.feed(Begin(1, 1, 1))
    a.feed(Insert(None, 99, ("5",)))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None and txn.changes == []


def test_primary_key_change_becomes_delete_of_old_key_and_upsert_of_new() -> None:
    a = assembler()
    a.feed(Begin(1, 1, 1))
    a.feed(Update(None, 16384, old=("1", None, None, None), old_kind="K", new=row("2")))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None
    assert [(c.op, c.source_id) for c in txn.changes if isinstance(c, RowChange)] == [
        ("delete", "1"),
        ("update", "2"),
    ]


def test_update_with_full_old_row_and_same_key_is_one_update() -> None:
    a = assembler()
    a.feed(Begin(1, 1, 1))
    a.feed(Update(None, 16384, old=row("1", "old"), old_kind="O", new=row("1", "new")))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None and [c.op for c in txn.changes if isinstance(c, RowChange)] == ["update"]


def test_unchanged_toast_is_kept_as_a_marker() -> None:
    a = assembler()
    a.feed(Begin(1, 1, 1))
    a.feed(Update(None, 16384, None, None, row("1", "new title", UNCHANGED_TOAST)))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None
    change = txn.changes[0]
    assert isinstance(change, RowChange) and change.content == ("new title", UNCHANGED_TOAST)
    assert change.has_unchanged_toast()


def test_delete_and_truncate() -> None:
    a = assembler()
    a.feed(Begin(1, 1, 1))
    a.feed(Delete(None, 16384, ("3", None, None, None), "K"))
    a.feed(Truncate(None, (16384, 99), cascade=False, restart_identity=False))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None
    delete, truncate = txn.changes
    assert isinstance(delete, RowChange) and delete.op == "delete" and delete.source_id == "3"
    assert isinstance(truncate, TableTruncate) and truncate.table == "public.articles"


def test_streamed_transaction_commits_with_changes_from_all_its_blocks() -> None:
    a = assembler()
    a.feed(StreamStart(xid=900, first_segment=True))
    a.feed(Insert(900, 16384, row("1")))
    a.feed(StreamStop())
    a.feed(StreamStart(xid=900, first_segment=False))
    a.feed(Insert(900, 16384, row("2")))
    a.feed(StreamStop())
    assert not a.idle
    txn = a.feed(StreamCommit(900, 0, commit_lsn=700, end_lsn=760, commit_time=5))
    assert txn is not None and a.idle
    assert [c.source_id for c in txn.changes if isinstance(c, RowChange)] == ["1", "2"]


def test_aborted_streamed_transaction_vanishes() -> None:
    a = assembler()
    a.feed(StreamStart(900, True))
    a.feed(Insert(900, 16384, row("1")))
    a.feed(StreamStop())
    a.feed(StreamAbort(900, 900, None, None))
    assert a.idle


def test_rolled_back_savepoint_in_a_streamed_transaction_drops_only_its_changes() -> None:
    a = assembler()
    a.feed(StreamStart(900, True))
    a.feed(Insert(900, 16384, row("1")))
    a.feed(Insert(901, 16384, row("2")))  # inside a savepoint: the subtransaction's xid
    a.feed(StreamStop())
    a.feed(StreamAbort(900, 901, None, None))
    txn = a.feed(StreamCommit(900, 0, 10, 20, 1))
    assert txn is not None
    assert [c.source_id for c in txn.changes if isinstance(c, RowChange)] == ["1"]


def test_interleaved_streamed_transactions_stay_apart() -> None:
    a = assembler()
    a.feed(StreamStart(1, True))
    a.feed(Insert(1, 16384, row("a")))
    a.feed(StreamStop())
    a.feed(StreamStart(2, True))
    a.feed(Insert(2, 16384, row("b")))
    a.feed(StreamStop())
    second = a.feed(StreamCommit(2, 0, 10, 20, 1))
    first = a.feed(StreamCommit(1, 0, 30, 40, 1))
    assert second is not None and first is not None
    assert [c.source_id for c in second.changes if isinstance(c, RowChange)] == ["b"]
    assert [c.source_id for c in first.changes if isinstance(c, RowChange)] == ["a"]


def test_change_without_relation_or_transaction_is_a_protocol_error() -> None:
    a = TransactionAssembler({"public.articles": ARTICLES})
    a.feed(Begin(1, 1, 1))
    with pytest.raises(ProtocolError, match="before its Relation"):
        a.feed(Insert(None, 16384, row("1")))
    with pytest.raises(ProtocolError, match="outside any transaction"):
        assembler().feed(Insert(None, 16384, row("1")))


def _renamed(relation: Relation, old: str, new: str) -> Relation:
    columns = tuple(
        RelationColumn(new if c.name == old else c.name, c.type_oid, c.type_modifier, c.is_key)
        for c in relation.columns
    )
    return Relation(None, relation.relation_id, relation.namespace, relation.name, "d", columns)


def _insert_one(a: TransactionAssembler, values: tuple[object, ...]) -> RowChange:
    a.feed(Begin(final_lsn=500, commit_time=10, xid=7))
    a.feed(Insert(None, 16384, values))
    txn = a.feed(Commit(0, commit_lsn=500, end_lsn=560, commit_time=10))
    assert txn is not None
    (change,) = txn.changes
    assert isinstance(change, RowChange)
    return change


def test_configured_column_renamed_under_the_stream_names_it_and_what_to_do() -> None:
    a = assembler()
    with pytest.raises(ConfigError) as error:
        a.feed(_renamed(RELATION, "body", "text"))
    message = error.value.message
    assert "public.articles: column 'body' (tables[].columns) is not in the table" in message
    assert "cdc setup" in message and "cdc resync --table public.articles" in message


def test_changes_from_before_a_rename_the_configuration_follows_are_fetched_not_guessed() -> None:
    # The configuration already names `text`; the slot resends changes made while it was `body`.
    config = TableConfig(table="public.articles", columns=["title", "text"], metadata=["author_id"])
    a = TransactionAssembler({"public.articles": config})
    a.feed(RELATION)
    old = _insert_one(a, row("1"))
    assert old.key == ("1",) and old.source_id == "1"
    assert old.content == (UNCHANGED_TOAST, UNCHANGED_TOAST)
    assert old.metadata == (UNCHANGED_TOAST,) and old.has_unchanged_toast()
    a.feed(_renamed(RELATION, "body", "text"))
    new = _insert_one(a, row("2", "T", "B", "3"))
    assert new.content == ("T", "B") and new.metadata == ("3",)
    # Once the configured names were seen, losing one again is a rename under the stream.
    with pytest.raises(ConfigError, match="'text'"):
        a.feed(RELATION)


def test_a_dropped_column_the_configuration_does_not_name_is_no_concern() -> None:
    a = assembler()
    extra = (*RELATION.columns, RelationColumn("views", 23, -1, False))
    a.feed(Relation(None, 16384, "public", "articles", "d", extra))
    a.feed(RELATION)  # `views` dropped
    assert _insert_one(a, row("1")).content == ("t", "b")


def test_composite_key_renders_as_json_array() -> None:
    relation = Relation(
        None,
        5,
        "public",
        "docs",
        "d",
        (
            RelationColumn("lang", 25, -1, True),
            RelationColumn("id", 23, -1, True),
            RelationColumn("body", 25, -1, False),
        ),
    )
    a = TransactionAssembler({"public.docs": TableConfig(table="public.docs", columns=["body"])})
    a.feed(relation)
    a.feed(Begin(1, 1, 1))
    a.feed(Insert(None, 5, ("en", "42", "hello")))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None
    change = txn.changes[0]
    assert isinstance(change, RowChange) and change.source_id == '["en", "42"]'


def test_replica_identity_full_uses_the_primary_key_not_every_flagged_column() -> None:
    full = Relation(
        None,
        16384,
        "public",
        "articles",
        "f",
        tuple(RelationColumn(c.name, c.type_oid, -1, True) for c in RELATION.columns),
    )
    a = TransactionAssembler({"public.articles": ARTICLES}, {"public.articles": ("id",)})
    a.feed(full)
    a.feed(Begin(1, 1, 1))
    a.feed(Update(None, 16384, old=row("1", "old"), old_kind="O", new=row("1", "new")))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None
    [change] = txn.changes
    assert isinstance(change, RowChange) and (change.source_id, change.op) == ("1", "update")


# ---- large plain transactions, handed on in parts -------------------------------------------


def ids(txn: object) -> list[str]:
    return [c.source_id for c in txn.changes if isinstance(c, RowChange)]  # type: ignore[attr-defined]


def test_a_plain_transaction_over_the_part_limit_is_handed_on_in_parts() -> None:
    a = assembler()
    a.part_limit = 2
    a.feed(Begin(final_lsn=500, commit_time=10, xid=7))
    assert a.feed(Insert(None, 16384, row("1"))) is None
    first = a.feed(Insert(None, 16384, row("2")))
    assert first is not None and first.is_part and ids(first) == ["1", "2"]
    # A part knows its commit LSN (from Begin) but not yet its end, and how far it reaches.
    assert (first.commit_lsn, first.end_lsn, first.through) == (500, 0, 2)
    assert first.changes[0].commit_lsn == 500 and first.changes[0].commit_time == 10
    assert not a.idle  # the transaction is still open
    a.feed(Insert(None, 99, (5,)))  # another table's change still counts as received
    assert a.feed(Insert(None, 16384, row("3"))) is None
    last = a.feed(Commit(0, commit_lsn=500, end_lsn=560, commit_time=10))
    assert last is not None and not last.is_part and ids(last) == ["3"]
    assert last.end_lsn == 560 and a.idle


def test_a_part_counts_every_change_message_received_so_far() -> None:
    a = assembler()
    a.part_limit = 1
    a.feed(Begin(final_lsn=500, commit_time=10, xid=7))
    a.feed(Insert(None, 99, (1,)))
    a.feed(Insert(None, 99, (2,)))
    part = a.feed(Insert(None, 16384, row("1")))
    assert part is not None and part.through == 3


def test_take_part_hands_on_what_is_held_and_nothing_when_empty() -> None:
    a = assembler()
    assert a.take_part() is None  # no transaction open
    a.feed(Begin(final_lsn=500, commit_time=10, xid=7))
    assert a.take_part() is None  # open, but nothing held
    a.feed(Insert(None, 16384, row("1")))
    assert a.open_changes == 1
    part = a.take_part()
    assert part is not None and ids(part) == ["1"] and part.through == 1
    assert a.open_changes == 0


def test_after_a_restart_the_changes_already_in_the_sink_are_skipped() -> None:
    # The sink holds the first 2 changes of the transaction committed at 500.
    a = TransactionAssembler(
        {"public.articles": ARTICLES}, changes_to_skip=lambda lsn: 2 if lsn == 500 else 0
    )
    a.feed(RELATION)
    a.feed(OTHER)
    a.feed(Begin(final_lsn=500, commit_time=10, xid=7))
    for id_ in ("1", "2", "3", "4"):
        a.feed(Insert(None, 16384, row(id_)))
    txn = a.feed(Commit(0, commit_lsn=500, end_lsn=560, commit_time=10))
    assert txn is not None and ids(txn) == ["3", "4"]
    # Another transaction is not touched.
    a.feed(Begin(final_lsn=600, commit_time=11, xid=8))
    a.feed(Insert(None, 16384, row("5")))
    other = a.feed(Commit(0, commit_lsn=600, end_lsn=660, commit_time=11))
    assert other is not None and ids(other) == ["5"]


def test_parts_after_a_restart_count_from_the_start_of_the_transaction() -> None:
    a = TransactionAssembler({"public.articles": ARTICLES}, changes_to_skip=lambda lsn: 2)
    a.feed(RELATION)
    a.part_limit = 2
    a.feed(Begin(final_lsn=500, commit_time=10, xid=7))
    parts = [a.feed(Insert(None, 16384, row(str(i)))) for i in range(1, 7)]
    handed = [p for p in parts if p is not None]
    assert [ids(p) for p in handed] == [["3", "4"], ["5", "6"]]
    assert [p.through for p in handed] == [4, 6]


# ---- Relations without columns (wal2json truncating a table before any row of it) -----------


BARE = Relation(None, 16384, "public", "articles", "d", ())


def test_a_relation_without_columns_records_the_name_and_truncates_by_it() -> None:
    a = TransactionAssembler({"public.articles": ARTICLES})
    a.feed(BARE)  # no key, no content: must not raise
    a.feed(Relation(None, 99, "public", "unrelated", "d", ()))
    a.feed(Begin(1, 1, 1))
    a.feed(Truncate(None, (16384,), cascade=False, restart_identity=False))
    a.feed(Truncate(None, (99,), cascade=False, restart_identity=False))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None
    assert txn.changes == [TableTruncate("public.articles", 1, 1)]


def test_a_relation_with_columns_after_one_without_gives_the_table_its_shape() -> None:
    a = TransactionAssembler({"public.articles": ARTICLES})
    a.feed(BARE)
    a.feed(RELATION)
    assert _insert_one(a, row("1")).content == ("t", "b")
    a.feed(Begin(2, 2, 2))
    a.feed(Truncate(None, (16384,), cascade=False, restart_identity=False))
    txn = a.feed(Commit(0, 2, 3, 2))
    assert txn is not None and txn.changes == [TableTruncate("public.articles", 2, 2)]


def test_a_row_change_of_a_table_known_by_name_only_is_a_protocol_error() -> None:
    a = TransactionAssembler({"public.articles": ARTICLES})
    a.feed(BARE)
    a.feed(Begin(1, 1, 1))
    with pytest.raises(ProtocolError, match=r"relation 16384 \(public.articles\).*no columns"):
        a.feed(Insert(None, 16384, ()))


def test_row_changes_of_an_unconfigured_table_known_by_name_only_are_dropped() -> None:
    a = TransactionAssembler({"public.articles": ARTICLES})
    a.feed(Relation(None, 99, "public", "unrelated", "d", ()))
    a.feed(Begin(1, 1, 1))
    a.feed(Insert(None, 99, ()))
    txn = a.feed(Commit(0, 1, 2, 1))
    assert txn is not None and txn.changes == []


def test_a_truncate_of_an_unknown_relation_is_still_a_protocol_error() -> None:
    a = TransactionAssembler({"public.articles": ARTICLES})
    a.feed(Begin(1, 1, 1))
    with pytest.raises(ProtocolError, match="before its Relation"):
        a.feed(Truncate(None, (16384,), cascade=False, restart_identity=False))
