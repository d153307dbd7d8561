"""Parallel sink writers: the partition rule, writer positions, and restarts between commits.

The simulation drives the real transaction assembler and position rules over a stream of
transactions (some large enough to arrive in parts), applies each batch over several writers
that commit one by one, crashes between two writers' commits, and restarts as the streamer
does: from the lowest position, the server resending what was not confirmed. Every change must
then reach its writer exactly once, and every row end at its last state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from cdc.config import TableConfig
from cdc.partitions import partition_of, split
from cdc.replication.changes import RowChange, Transaction
from cdc.replication.lsn import ZERO, Lsn
from cdc.replication.messages import Begin, Commit, Insert, Relation, RelationColumn
from cdc.replication.positions import (
    Position,
    PositionRules,
    WriterPositions,
    held_by_writer,
    lowest,
)
from cdc.replication.transactions import TransactionAssembler

TABLE = "public.articles"
ARTICLES = TableConfig(table=TABLE, columns=["body"])
RELATION = Relation(
    None,
    16384,
    "public",
    "articles",
    "d",
    (RelationColumn("id", 20, -1, True), RelationColumn("body", 25, -1, False)),
)


# ---- the partition rule -----------------------------------------------------------------


def test_a_row_always_goes_to_the_same_writer_in_every_process() -> None:
    # CRC-32 of "table\0id": fixed values, whatever PYTHONHASHSEED is.
    assert [partition_of(TABLE, str(i), 4) for i in range(8)] == [
        partition_of(TABLE, str(i), 4) for i in range(8)
    ]
    assert partition_of("public.articles", "1", 4) == 1237538259 % 4 == 3
    assert partition_of("public.articles", "2", 4) == 1
    assert partition_of("public.faq", "1", 4) == 3
    assert all(partition_of(TABLE, str(i), 1) == 0 for i in range(50))


def test_split_keeps_each_writers_rows_in_order_and_spreads_them() -> None:
    rows = [(TABLE, str(i)) for i in range(1000)]
    shares = split(rows, lambda row: row, 4)
    assert sorted(row for share in shares for row in share) == sorted(rows)
    for index, share in enumerate(shares):
        assert share == [row for row in rows if partition_of(*row, 4) == index]
        assert 150 < len(share) < 350  # spread, not all on one writer


# ---- positions --------------------------------------------------------------------------


def test_positions_order_along_the_stream() -> None:
    before = Position(Lsn(100))
    inside = before.within(Lsn(150), 3)
    further = before.within(Lsn(150), 9)
    after = inside.after(Lsn(160))
    assert [p.order for p in (before, inside, further, after)] == sorted(
        p.order for p in (after, further, before, inside)
    )
    assert lowest([after, further, inside, before]) == before
    assert lowest([after, further]) == further


def test_a_position_holds_whole_transactions_and_the_counted_part_of_one() -> None:
    position = Position(Lsn(100)).within(Lsn(150), 3)
    assert position.holds(Lsn(90), 0) and position.holds(Lsn(100), 7)
    assert position.holds(Lsn(150), 1) and position.holds(Lsn(150), 3)
    assert not position.holds(Lsn(150), 4)
    assert not position.holds(Lsn(150), 0)  # a streamed transaction: never applied in part
    assert not position.holds(Lsn(250), 1)


def test_writers_standing_together_filter_nothing() -> None:
    together = WriterPositions((Position(Lsn(100)),) * 3)
    assert together.even and together.lowest == Position(Lsn(100))
    assert together.held_in(Lsn(50)) is None
    rules = PositionRules(together.lowest, together)
    assert rules.held_in(Lsn(50)) is None


def test_a_writer_ahead_holds_its_own_rows_only() -> None:
    ahead, behind = Position(Lsn(200)), Position(Lsn(100))
    mine = [str(i) for i in range(40) if partition_of(TABLE, str(i), 2) == 0]
    theirs = [str(i) for i in range(40) if partition_of(TABLE, str(i), 2) == 1]
    rules = PositionRules(behind, WriterPositions((ahead, behind)))
    assert rules.checkpoint == behind
    held = rules.held_in(Lsn(150))
    assert held is not None
    assert all(held(1, change(i, Lsn(150))) for i in mine)
    assert not any(held(1, change(i, Lsn(150))) for i in theirs)
    assert rules.held_in(Lsn(250)) is None  # past every writer
    kept = held_by_writer(held, 1, [change(mine[0], Lsn(150)), change(theirs[0], Lsn(150))])
    assert [c.source_id for c in kept if isinstance(c, RowChange)] == [theirs[0]]


def change(source_id: str, commit: Lsn) -> RowChange:
    return RowChange(TABLE, source_id, (source_id,), "insert", ("x",), None, commit, 0, 0)


# ---- restarts between writers' commits ----------------------------------------------------


@dataclass
class Txn:
    commit: Lsn
    end: Lsn
    # (row id, version) in order; a version is unique across the stream.
    rows: list[tuple[str, str]]


@dataclass
class Sink:
    """What each writer committed: its rows' versions and its position."""

    writers: int
    positions: list[Position]
    rows: dict[str, str] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)  # every version, each time applied
    confirmed: Lsn = ZERO  # the slot's confirmed position: the server resends after it


def stream(seed: int, count: int) -> list[Txn]:
    rng = random.Random(seed)
    txns, version = [], 0
    for i in range(count):
        size = rng.choice([1, 2, 3, 5, 12, 30])
        rows = []
        for _ in range(size):
            version += 1
            rows.append((str(rng.randrange(25)), f"v{version}"))
        base = 1000 * (i + 1)
        txns.append(Txn(Lsn(base + 500), Lsn(base + 560), rows))
    return txns


def feed(txn: Txn, assembler: TransactionAssembler) -> list[Transaction]:
    """The messages of `txn` into `assembler`: what it hands on (parts, then the rest)."""
    out = []
    for message in [
        Begin(final_lsn=txn.commit, commit_time=0, xid=1),
        *[Insert(None, 16384, (rid, version)) for rid, version in txn.rows],
        Commit(0, commit_lsn=txn.commit, end_lsn=txn.end, commit_time=0),
    ]:
        handed = assembler.feed(message)
        if handed is not None:
            out.append(handed)
    return out


def run(txns: list[Txn], sink: Sink, rng: random.Random, crash_after: int | None) -> bool:
    """Stream `txns` into `sink` as the streamer does, from where the sink stands; crash
    (return False) in the middle of applying batch number `crash_after`. Returns whether it
    ran to the end."""
    stored = WriterPositions(tuple(sink.positions))
    rules = PositionRules(stored.lowest, stored)
    assembler = TransactionAssembler(
        {TABLE: ARTICLES},
        changes_to_skip=rules.changes_to_skip,
        held_in=rules.held_in,
    )
    # Batches after a restart need not end where they did before it.
    assembler.part_limit = rng.choice([2, 3, 5, 8])
    assembler.feed(RELATION)
    position, confirmed, batches = stored.lowest, Lsn(0), 0
    for txn in txns:
        if txn.end <= sink.confirmed:
            continue  # the server resends only what was not confirmed
        for handed in feed(txn, assembler):
            end = None if handed.is_part else handed.end_lsn
            if rules.already_applied(handed.commit_lsn, end):
                continue
            if handed.through is not None:
                position = position.within(handed.commit_lsn, handed.through)
            else:
                position = position.after(handed.end_lsn)
            shares = split(
                [c for c in handed.changes if isinstance(c, RowChange)],
                lambda c: (c.table, c.source_id),
                sink.writers,
            )
            order = list(range(sink.writers))
            rng.shuffle(order)  # writers commit in any order
            for done, writer in enumerate(order):
                if batches == crash_after and done == len(order) // 2:
                    sink.confirmed = confirmed
                    return False
                for c in shares[writer]:
                    assert c.content is not None
                    sink.rows[c.source_id] = str(c.content[0])
                    sink.applied.append(str(c.content[0]))
                if stored.moves(writer, position):
                    sink.positions[writer] = position
            batches += 1
            confirmed = rules.applied(position)
    sink.confirmed = confirmed
    return True


@pytest.mark.parametrize("writers", [2, 3, 4])
@pytest.mark.parametrize("seed", range(12))
def test_a_crash_between_writers_commits_loses_nothing_and_applies_nothing_twice(
    writers: int, seed: int
) -> None:
    rng = random.Random(seed)
    txns = stream(seed, 40)
    sink = Sink(writers, [Position(Lsn(0))] * writers)
    crashes, apart = 0, False
    while True:
        # Later crashes come early too: while the writers behind are still catching up.
        crash_after = rng.choice([0, 1, rng.randrange(30)]) if crashes < 4 else None
        finished = run(txns, sink, rng, crash_after)
        if finished:
            break
        crashes += 1
        # Some crash left the writers apart (some committed the batch, some did not).
        apart = apart or not WriterPositions(tuple(sink.positions)).even
    assert crashes > 0 and apart
    every = [version for txn in txns for _, version in txn.rows]
    assert sorted(sink.applied) == sorted(every), "each change reaches its writer exactly once"
    last = {rid: version for txn in txns for rid, version in txn.rows}
    assert sink.rows == last
