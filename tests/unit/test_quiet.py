"""When the stream went quiet: the reader's reports, and when a lone change is due."""

from __future__ import annotations

from cdc.pipeline.quiet import Quiet


def test_quiet_after_the_socket_drained_at_a_transaction_boundary_plus_the_grace() -> None:
    quiet = Quiet(grace=0.002)
    assert quiet.due_at() is None
    assert quiet.drained(at_boundary=True, now=1.0)
    assert quiet.due_at() == 1.002


def test_draining_inside_a_transaction_is_not_quiet() -> None:
    quiet = Quiet(grace=0.002)
    assert not quiet.drained(at_boundary=False, now=1.0)
    assert quiet.due_at() is None


def test_more_data_starts_the_quiet_over_so_bursts_keep_batching() -> None:
    quiet = Quiet(grace=0.002)
    quiet.drained(at_boundary=True, now=1.0)
    quiet.heard()
    assert quiet.due_at() is None
    assert quiet.drained(at_boundary=True, now=1.5)
    assert quiet.due_at() == 1.502


def test_a_quiet_stream_stays_quiet_from_when_it_first_drained() -> None:
    # Keepalives wake the reader without data: the quiet keeps its start (no new wake-up).
    quiet = Quiet(grace=0.002)
    quiet.drained(at_boundary=True, now=1.0)
    assert not quiet.drained(at_boundary=True, now=9.0)
    assert quiet.due_at() == 1.002


def test_no_idle_flush_means_never_quiet() -> None:
    quiet = Quiet(grace=None)
    assert not quiet.drained(at_boundary=True, now=1.0)
    assert quiet.due_at() is None
