"""RetryPolicy's backoff and the parsing of a server's Retry-After: pure, no clock, no I/O."""

from __future__ import annotations

import email.utils

import pytest

from cdc.embedding.providers import RETRY_AFTER_HARD_CAP, RetryPolicy, parse_retry_after

ALMOST_ONE = 1.0 - 1e-12


def test_backoff_doubles_from_base_delay() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    ceilings = [policy.delay(attempt, None, ALMOST_ONE) for attempt in (1, 2, 3, 4)]
    assert ceilings == pytest.approx([0.5, 1.0, 2.0, 4.0])


def test_full_jitter_scales_the_whole_delay() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    assert policy.delay(3, None, 0.0) == 0.0
    assert policy.delay(3, None, 0.25) == pytest.approx(0.5)
    assert policy.delay(3, None, 0.5) == pytest.approx(1.0)


def test_backoff_is_capped_by_max_delay() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    assert policy.delay(10, None, ALMOST_ONE) == pytest.approx(3.0)
    assert policy.delay(10, None, 0.5) == pytest.approx(1.5)


def test_absurd_attempt_numbers_do_not_overflow() -> None:
    assert RetryPolicy(max_delay=30.0).delay(100_000, None, 0.5) == pytest.approx(15.0)


def test_delay_stays_within_bounds_for_every_attempt_and_rand() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=2.0)
    delays = [policy.delay(a, None, r / 10) for a in range(1, 40) for r in range(10)]
    assert min(delays) == 0.0
    assert max(delays) <= 2.0


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    assert policy.delay(1, 5.0, 0.0) == 5.0
    # A larger backoff wins over a smaller Retry-After.
    assert policy.delay(6, 1.0, ALMOST_ONE) == pytest.approx(16.0)


def test_retry_after_above_max_delay_is_honoured_up_to_the_hard_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=1.0)
    assert policy.delay(1, 10.0, 0.5) == 10.0
    assert policy.delay(1, 10_000.0, 0.5) == RETRY_AFTER_HARD_CAP


def test_negative_retry_after_counts_as_none_asked() -> None:
    assert RetryPolicy(base_delay=1.0).delay(1, -5.0, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"base_delay": -1.0}, {"max_delay": -0.1}])
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


NOW = 1_700_000_000.0


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after({"retry-after": "2"}, NOW) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}, NOW) == 0.25


def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9"}
    assert parse_retry_after(headers, NOW) == 1.5


def test_retry_after_as_http_date() -> None:
    date = email.utils.formatdate(NOW + 7, usegmt=True)
    assert parse_retry_after({"retry-after": date}, NOW) == pytest.approx(7.0)


def test_retry_after_date_in_the_past_means_now() -> None:
    date = email.utils.formatdate(NOW - 60, usegmt=True)
    assert parse_retry_after({"retry-after": date}, NOW) == 0.0


@pytest.mark.parametrize(
    "headers",
    [{}, {"retry-after": "soon"}, {"retry-after": "nan"}, {"retry-after": ""}],
)
def test_no_usable_retry_after(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers, NOW) is None


def test_garbage_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "3"}, NOW) == 3.0
