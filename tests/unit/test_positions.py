"""The position rules: what may be confirmed, what is skipped on restart, checkpoints inside a
transaction (invariants 1, 2 and 6 of design.md)."""

from __future__ import annotations

from cdc.replication.lsn import Lsn
from cdc.replication.positions import Position, PositionRules, StandbyGate


def test_confirmation_follows_only_what_the_sink_committed() -> None:
    rules = PositionRules(Position(Lsn(100)))
    assert rules.confirmable == 100
    # Invariant 1: nothing moves until the sink reports a commit.
    assert rules.applied(Position(Lsn(200))) == 200
    assert rules.checkpoint == Position(Lsn(200))


def test_a_checkpoint_inside_a_transaction_confirms_only_the_last_boundary() -> None:
    rules = PositionRules(Position(Lsn(100)))
    inside = Position(Lsn(100)).within(commit_lsn=500, changes=20_000)
    # The server would skip the rest of the transaction if its position were confirmed.
    assert rules.applied(inside) == 100
    assert rules.checkpoint == inside and rules.checkpoint.is_partial
    assert rules.applied(inside.within(500, 40_000)) == 100
    # Its last part lands with its Commit: the boundary after it may be confirmed.
    assert rules.applied(inside.after(560)) == 560
    assert not rules.checkpoint.is_partial


def test_confirmation_never_moves_backwards() -> None:
    rules = PositionRules(Position(Lsn(300)))
    assert rules.keepalive(900, nothing_pending=True) == 900
    assert rules.applied(Position(Lsn(400))) == 900


def test_transactions_the_sink_holds_are_skipped_on_restart() -> None:
    # Invariant 2: the slot resends from its confirmed position, which may trail the sink.
    rules = PositionRules(Position(Lsn(560)))
    assert rules.already_applied(commit_lsn=500, end_lsn=560)
    assert not rules.already_applied(commit_lsn=600, end_lsn=660)
    # A part (end not known yet) of a transaction committed before the checkpoint.
    assert rules.already_applied(commit_lsn=500, end_lsn=None)
    assert not rules.already_applied(commit_lsn=600, end_lsn=None)


def test_a_transaction_applied_in_part_resumes_after_what_the_sink_holds() -> None:
    rules = PositionRules(Position(Lsn(100), partial_commit=Lsn(500), partial_changes=3))
    assert rules.changes_to_skip(500) == 3
    assert rules.changes_to_skip(600) == 0
    # The transaction itself is not skipped: its end is past the last whole one.
    assert not rules.already_applied(commit_lsn=500, end_lsn=560)
    assert not rules.already_applied(commit_lsn=500, end_lsn=None)


def test_a_quiet_publication_confirms_keepalives_only_when_nothing_is_pending() -> None:
    # Invariant 6: keepalives advance the slot when nothing received waits to be applied.
    rules = PositionRules(Position(Lsn(100)))
    assert rules.keepalive(700, nothing_pending=False) is None
    assert rules.confirmable == 100
    assert rules.keepalive(700, nothing_pending=True) == 700
    # The sink's checkpoint is not moved by a keepalive: it guards what was written.
    assert rules.checkpoint == Position(Lsn(100))


def test_positions_read_as_operators_expect() -> None:
    assert str(Position(Lsn(0x1000))) == "0/1000"
    assert str(Position(Lsn(0x1000)).within(0x2000, 7)) == "0/1000 + 7 changes of 0/2000"


def test_the_standby_gate_confirms_only_what_the_standby_has_the_sink_commit_of() -> None:
    gate = StandbyGate()
    assert not gate.pending and gate.release(Lsn(10**9)) is None
    gate.hold(Lsn(100), needs=Lsn(150))
    gate.hold(Lsn(200), needs=Lsn(260))
    gate.hold(Lsn(300), needs=Lsn(390))
    assert gate.release(Lsn(149)) is None  # the first commit is not on the standby yet
    assert gate.release(Lsn(300)) == Lsn(200)  # the furthest one it covers, in order
    assert gate.pending
    assert gate.release(None) == Lsn(300)  # no standby to wait for: all of them
    assert not gate.pending
