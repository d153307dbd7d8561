"""The fleet's pure rules: least in flight, the circuit breaker and its probes, per-endpoint rate
limits, and endpoint names that never carry a path or a key. The clock and the jitter are
passed in: no sleeps."""

from __future__ import annotations

import pytest

from cdc.embedding.fleet import (
    BackIn,
    Fleet,
    StillOut,
    TakenOut,
    Ticket,
    endpoint_labels,
    endpoint_name,
)
from cdc.embedding.providers import RetryPolicy
from cdc.embedding.ratelimit import ServerLimits

# Backoff ceilings 1, 2, 4, 8, 16, then 30 s; with rand=0.5, half of each.
POLICY = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=30.0)
HALF = 0.5


def fleet(count: int = 3, capacity: int = 4) -> Fleet:
    return Fleet([f"e{i}:8000" for i in range(count)], capacity, POLICY, now=0.0)


def take(f: Fleet, now: float = 0.0) -> Ticket:
    ticket = f.acquire(now)
    assert ticket is not None
    return ticket


def test_requests_go_to_the_endpoint_with_fewest_in_flight() -> None:
    f = fleet()
    first = [take(f).index for _ in range(3)]
    assert first == [0, 1, 2]
    held = take(f)  # all at one: round-robin goes on with 0
    assert held.index == 0
    one = Ticket(1)
    f.succeeded(one, 0.0)  # endpoint 1 now has the fewest
    assert take(f).index == 1
    assert [f.in_flight(i) for i in range(3)] == [2, 1, 1]


def test_ties_rotate_deterministically() -> None:
    f = fleet()
    order = []
    for _ in range(7):
        ticket = take(f)
        order.append(ticket.index)
        f.succeeded(ticket, 0.0)
    assert order == [0, 1, 2, 0, 1, 2, 0]


def test_concurrency_is_per_endpoint() -> None:
    f = fleet(count=2, capacity=2)
    tickets = [take(f) for _ in range(4)]
    assert sorted(t.index for t in tickets) == [0, 0, 1, 1]
    assert f.acquire(0.0) is None
    assert f.next_opening(0.0) is None  # only a finishing request frees a place
    f.succeeded(tickets[0], 0.1)
    assert take(f, 0.1).index == tickets[0].index


def test_a_failure_takes_the_endpoint_out_until_its_backoff_then_one_probe() -> None:
    f = fleet()
    ticket = take(f)  # endpoint 0
    change = f.failed(ticket, now=10.0, rand=HALF)
    assert change == TakenOut("e0:8000", backoff=0.5, up=2)
    assert not f.is_up(0) and f.any_up()
    # Only the others take work meanwhile, however many requests come.
    during = [take(f, 10.2) for _ in range(6)]
    assert {t.index for t in during} == {1, 2}
    for t in during:
        f.succeeded(t, 10.2)
    # After the backoff: one probe, and no second request while it is out.
    probe = take(f, 10.5)
    assert probe == Ticket(0, probe=True)
    assert {take(f, 10.5).index for _ in range(4)} == {1, 2}
    assert f.succeeded(probe, 10.6) == BackIn("e0:8000", out_for=pytest.approx(0.6))
    assert f.is_up(0)


def test_failed_probes_double_the_backoff_up_to_the_cap() -> None:
    f = fleet(count=2)
    now = 0.0
    backoffs = []
    change = f.failed(take(f), now, rand=HALF)
    assert isinstance(change, TakenOut)
    backoffs.append(change.backoff)
    for _ in range(7):
        now += backoffs[-1]
        probe = take(f, now)
        assert probe.probe and probe.index == 0
        change = f.failed(probe, now, rand=HALF)
        assert isinstance(change, StillOut)
        backoffs.append(change.backoff)
    assert backoffs == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    # A success resets the exponent: the next failure starts from the bottom again.
    now += backoffs[-1]
    assert isinstance(f.succeeded(take(f, now), now), BackIn)
    change = f.failed(Ticket(0), now, rand=HALF)
    assert change == TakenOut("e0:8000", backoff=0.5, up=1)


def test_the_jitter_spreads_the_backoff_over_its_ceiling() -> None:
    assert fleet().failed(Ticket(0), 0.0, rand=0.0) == TakenOut("e0:8000", 0.0, 2)
    f = fleet()
    change = f.failed(Ticket(0), 0.0, rand=0.999)
    assert isinstance(change, TakenOut) and 0.99 < change.backoff < 1.0


def test_requests_in_flight_when_it_failed_neither_escalate_nor_restore() -> None:
    f = fleet(count=2)
    early = [take(f) for _ in range(4)]
    on_zero = [t for t in early if t.index == 0]
    assert len(on_zero) == 2
    f.failed(on_zero[0], 0.0, rand=HALF)  # out until 0.5
    assert f.failed(on_zero[1], 0.1, rand=HALF) is None  # no news: still 0.5
    assert f.acquire(0.4) is not None  # endpoint 1
    assert f.in_flight(0) == 0
    # An old request's success does not bring it back either: only a probe does.
    late = Fleet(["a", "b"], 4, POLICY, 0.0)
    t1, t2, t3 = take(late), take(late), take(late)
    assert (t1.index, t2.index, t3.index) == (0, 1, 0)
    late.failed(t1, 0.0, rand=HALF)
    assert late.succeeded(t3, 0.1) is None
    assert not late.is_up(0)


def test_retry_after_is_a_floor_for_the_backoff() -> None:
    f = fleet()
    change = f.failed(Ticket(0), 0.0, rand=HALF, retry_after=7.0)
    assert change == TakenOut("e0:8000", backoff=7.0, up=2)
    assert f.next_opening(0.0) == 0.0  # the others are free now
    # A later Retry-After on a request that was in flight still holds it longer.
    f.failed(Ticket(0), 1.0, rand=HALF, retry_after=9.0)
    busy = [take(f, 1.0) for _ in range(8)]  # fill endpoints 1 and 2
    assert {t.index for t in busy} == {1, 2}
    assert f.next_opening(1.0) == pytest.approx(9.0)


def test_a_request_that_just_failed_goes_to_a_healthy_endpoint_not_a_probe() -> None:
    f = fleet(count=2)
    f.failed(Ticket(0), 0.0, rand=0.0)  # out, but due for a probe at once
    assert take_without_probe(f).index == 1
    assert f.acquire(0.0) == Ticket(0, probe=True)  # a fresh request probes
    # With every endpoint out, even a request that just failed must probe.
    g = fleet(count=1)
    g.failed(Ticket(0), 0.0, rand=0.0)
    assert g.acquire(0.0, may_probe=False) == Ticket(0, probe=True)


def take_without_probe(f: Fleet) -> Ticket:
    ticket = f.acquire(0.0, may_probe=False)
    assert ticket is not None and not ticket.probe
    return ticket


def test_a_cancelled_probe_lets_another_go() -> None:
    f = fleet(count=1)
    f.failed(take(f), 0.0, rand=HALF)
    probe = take(f, 1.0)
    assert probe.probe
    assert f.acquire(1.0) is None
    assert f.next_opening(1.0) is None  # waiting on the probe's outcome
    f.release(probe)
    assert take(f, 1.0).probe


def test_when_every_endpoint_is_out_the_soonest_comes_back_first() -> None:
    f = fleet(count=2)
    f.failed(Ticket(0), 0.0, rand=HALF, retry_after=5.0)
    f.failed(Ticket(1), 0.0, rand=HALF, retry_after=3.0)
    assert not f.any_up()
    assert f.acquire(1.0) is None
    assert f.next_opening(1.0) == pytest.approx(2.0)
    assert take(f, 3.0) == Ticket(1, probe=True)
    assert f.acquire(3.0) is None  # endpoint 0 not due yet, 1 probed
    assert take(f, 5.0) == Ticket(0, probe=True)


def test_a_spent_rate_limit_window_holds_that_endpoint_only() -> None:
    f = fleet(count=2, capacity=1)
    exhausted = ServerLimits(remaining_requests=0, reset_requests=2.0)
    f.observe(0, exhausted, now=0.0)
    assert take(f).index == 1
    assert f.acquire(0.0) is None
    assert f.throttled(0.0)  # endpoint 0 has room; its limits hold it
    assert f.next_opening(0.0) == pytest.approx(2.0)
    assert take(f, 2.0).index == 0
    assert not f.throttled(2.0)


def test_a_429_pause_sends_work_to_the_others() -> None:
    f = fleet(count=3)
    f.pause(1, 4.0, now=0.0)
    assert {take(f).index for _ in range(8)} == {0, 2}
    # Now the others are full: endpoint 1's pause is why nothing more goes.
    assert f.acquire(0.0) is None and f.throttled(0.0)
    assert f.next_opening(0.0) == pytest.approx(4.0)


def test_a_fleet_needs_endpoints_and_room() -> None:
    with pytest.raises(ValueError, match="at least one endpoint"):
        Fleet([], 4, POLICY, 0.0)
    with pytest.raises(ValueError, match="capacity"):
        Fleet(["a"], 0, POLICY, 0.0)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://127.0.0.1:8001/v1", "127.0.0.1:8001"),
        ("https://api.openai.com/v1/", "api.openai.com"),
        (
            "https://user:sk-SECRET@gw.example.com:8443/key/sk-PATH/v1?api-key=sk-Q",
            "gw.example.com:8443",
        ),
        ("http://[::1]:9000/v1", "[::1]:9000"),
        ("not a url sk-SECRET", "unknown-host"),
    ],
)
def test_endpoint_names_are_host_and_port_only(url: str, name: str) -> None:
    assert endpoint_name(url) == name
    assert "SECRET" not in endpoint_name(url) and "/" not in endpoint_name(url)


def test_endpoints_sharing_a_host_and_port_get_their_position() -> None:
    urls = ["http://gw:80/a/v1", "http://gw:80/b/v1", "http://other/v1"]
    assert endpoint_labels(urls) == ["gw:80#0", "gw:80#1", "other"]
