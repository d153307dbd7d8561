"""The delay between `cdc run` sessions: grows with failures, resets after a healthy run."""

from __future__ import annotations

import pytest

from cdc.replication.reconnect import HEALTHY_AFTER, ReconnectBackoff

ALMOST_ONE = 1.0 - 1e-12


def test_delays_grow_with_consecutive_failures_up_to_the_ceiling() -> None:
    backoff = ReconnectBackoff()
    delays = [backoff.failed(0.0, ALMOST_ONE) for _ in range(9)]
    assert delays == pytest.approx([1, 2, 4, 8, 16, 32, 32, 32, 32])
    assert backoff.failures == 9


def test_jitter_spreads_between_half_and_all_of_the_ceiling() -> None:
    assert ReconnectBackoff().failed(0.0, 0.0) == pytest.approx(0.5)
    assert ReconnectBackoff().failed(0.0, 0.5) == pytest.approx(0.75)
    assert ReconnectBackoff(cap=3.0, failures=10).failed(0.0, ALMOST_ONE) == pytest.approx(3.0)


def test_a_session_that_streamed_a_healthy_while_resets_the_delay() -> None:
    backoff = ReconnectBackoff()
    for _ in range(8):
        backoff.failed(1.0, ALMOST_ONE)
    assert backoff.failed(2.0, ALMOST_ONE) == pytest.approx(32)
    # Weeks of streaming, then a blip: back to the first step, not the half-minute one.
    assert backoff.failed(HEALTHY_AFTER, ALMOST_ONE) == pytest.approx(1)
    assert backoff.failures == 1
    assert backoff.failed(0.0, ALMOST_ONE) == pytest.approx(2)


def test_short_sessions_do_not_reset_it() -> None:
    backoff = ReconnectBackoff(healthy_after=10.0)
    delays = [backoff.failed(9.9, ALMOST_ONE) for _ in range(3)]
    assert delays == pytest.approx([1, 2, 4])


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        ReconnectBackoff(base=0)
    with pytest.raises(ValueError):
        ReconnectBackoff(base=2, cap=1)


def test_a_session_counts_only_its_own_streaming() -> None:
    import time

    from cdc.metrics import Health
    from cdc.pipeline.runner import _streamed_for

    health = Health()
    before = time.monotonic()
    assert _streamed_for(health, before) == 0.0  # never streamed
    health.streaming = True
    health.streaming = False
    assert health.streaming_since is not None and health.streaming_since >= before
    assert _streamed_for(health, before) >= 0.0
    # A later session that failed before streaming does not inherit the earlier stream.
    assert _streamed_for(health, time.monotonic() + 1) == 0.0
