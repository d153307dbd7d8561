"""The rate gate: OpenAI-style durations, rate-limit headers, the token budget and pauses."""

from __future__ import annotations

import math

import pytest

from cdc.embedding.ratelimit import RateGate, ServerLimits, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.25", 0.25),
        (" 2s ", 2.0),
        ("", None),
        ("soon", None),
        ("5 s", None),
        ("1s trailing", None),
        ("-1", None),
        ("nan", None),
        (None, None),
    ],
)
def test_durations(text: str | None, seconds: float | None) -> None:
    parsed = parse_duration(text)
    if seconds is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(seconds)


def test_headers_say_when_the_window_is_spent() -> None:
    spent = ServerLimits.from_headers(
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "2s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert spent.exhausted_for() == 360.0
    left = ServerLimits.from_headers(
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "2s"}
    )
    assert left.exhausted_for() == 0.0
    assert ServerLimits.from_headers({}).exhausted_for() == 0.0
    garbled = ServerLimits.from_headers({"x-ratelimit-remaining-tokens": "many"})
    assert garbled.remaining_tokens is None and garbled.exhausted_for() == 0.0


def test_without_a_budget_requests_go_at_once() -> None:
    gate = RateGate(None, now=0.0)
    for _ in range(1000):
        assert gate.wait_for(1_000_000, now=0.0) == 0.0
        gate.take(1_000_000, now=0.0)


def test_the_budget_refills_continuously() -> None:
    gate = RateGate(600, now=0.0)  # 10 tokens a second, at most 600 held
    assert gate.wait_for(600, now=0.0) == 0.0
    gate.take(600, now=0.0)
    assert gate.wait_for(20, now=0.0) == pytest.approx(2.0)
    assert gate.wait_for(20, now=1.0) == pytest.approx(1.0)
    assert gate.wait_for(20, now=2.0) == 0.0
    # The bucket never holds more than a minute's worth, however long it was idle.
    assert gate.wait_for(600, now=10_000.0) == 0.0
    gate.take(600, now=10_000.0)
    assert gate.wait_for(1, now=10_000.0) == pytest.approx(0.1)


def test_a_request_above_the_whole_budget_waits_for_a_full_bucket_then_overdraws() -> None:
    gate = RateGate(60, now=0.0)
    gate.take(30, now=0.0)
    assert gate.wait_for(1000, now=0.0) == pytest.approx(30.0)
    assert gate.wait_for(1000, now=30.0) == 0.0
    gate.take(1000, now=30.0)
    # 940 tokens in debt at 1 a second, plus the next request's own token.
    assert gate.wait_for(1, now=30.0) == pytest.approx(941.0)


def test_a_pause_holds_every_request_and_the_longest_pause_wins() -> None:
    gate = RateGate(None, now=0.0)
    gate.pause(5.0, now=0.0)
    gate.pause(1.0, now=0.0)
    assert gate.wait_for(1, now=0.0) == 5.0
    assert gate.wait_for(1, now=4.0) == 1.0
    assert gate.wait_for(1, now=5.0) == 0.0
    gate.observe(ServerLimits(remaining_tokens=0, reset_tokens=3.0, remaining_requests=9), now=5.0)
    assert gate.wait_for(1, now=5.0) == 3.0


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tokens_per_minute"):
        RateGate(0, now=0.0)
    assert math.isinf(RateGate(None, now=0.0)._capacity)
