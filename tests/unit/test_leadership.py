"""The election's pure parts: the lease's rhythm, the bid's rhythm, names; and what a standby
answers on /readyz. The election itself runs against PostgreSQL in
tests/integration/test_leadership.py."""

from __future__ import annotations

import os
import re

from cdc.config import Settings, settings_from
from cdc.metrics import Health
from cdc.replication.leadership import Leadership, LeaseTimes, instance_name, leader_lock_key


def settings(**leader: float) -> Settings:
    return settings_from(
        {
            "source": {"dsn": "postgresql://u@127.0.0.1/db", "slot": "s1"},
            "tables": [{"table": "public.articles", "columns": ["title"]}],
            "leader": leader,
        }
    )


def test_the_leader_proves_itself_four_times_per_lease() -> None:
    times = LeaseTimes(10.0)
    assert times.ping_interval == 2.5
    assert times.ping_timeout == 5.0
    assert times.idle_session_timeout_ms == 10_000


def test_a_bid_backs_off_only_until_the_source_first_answers() -> None:
    leadership = Leadership(settings(retry_interval=0.5), "host/1")
    assert [leadership._retry_delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    leadership._reached = True
    assert {leadership._retry_delay(n) for n in range(6)} == {0.5}


def test_names_say_which_slot_and_which_process() -> None:
    assert leader_lock_key("w2v") == "wal2vec leader w2v"
    assert re.fullmatch(rf".+/{os.getpid()}", instance_name())


def test_a_standby_is_ready_while_it_reaches_the_source() -> None:
    health = Health()
    assert not health.ready  # before anything: neither streaming nor standing by
    health.stand_by(connected=True)
    assert health.ready and health.alive
    health.stand_by(connected=False)
    assert not health.ready and health.alive
    health.lead()
    assert not health.ready  # a leader is ready once it streams, its snapshot done
    health.snapshot_done = True
    health.streaming = True
    assert health.ready
