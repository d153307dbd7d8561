"""Active/standby: several `cdc run` on one configuration, one leader, never two writers.

Every write to the sink is audited by a trigger the test installs (statement level, on the
vectors and the state table): which instance wrote (its application_name, "wal2vec HOST/PID")
and which term the state row named at that moment. With the fence working, each term's writes
come from one instance and the terms follow one another without interleaving; a write by an
instance whose term had ended would show up under another instance's term.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cdc.db import ADVISORY_LOCK_HOLDERS
from cdc.replication.leadership import leader_lock_key
from tests.harness import (
    CdcProcess,
    Deployment,
    Workload,
    assert_in_step,
    http_status,
    scrape,
    wait_until,
)

# Short, so a frozen leader's lease runs out quickly; a standby retries twice a second.
LEADER = {"lease": 4, "retry_interval": 0.5}
KILLS = 5

AUDIT_DDL = """
CREATE TABLE write_audit (
    id bigserial PRIMARY KEY,
    app text NOT NULL,
    term text,
    written_to text NOT NULL
);
CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO write_audit (app, term, written_to) VALUES (
        current_setting('application_name'),
        (SELECT leader_token::text FROM cdc_state WHERE slot = TG_ARGV[0]),
        TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER audit_vectors AFTER INSERT OR UPDATE OR DELETE ON cdc_embeddings
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write({slot});
CREATE TRIGGER audit_state AFTER INSERT OR UPDATE OR DELETE ON cdc_state
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write({slot});
"""


def pid_of(application_name: str | None) -> int | None:
    match = re.fullmatch(r"wal2vec .*/(\d+)", application_name or "")
    return int(match.group(1)) if match else None


def leader_pid(deployment: Deployment) -> int | None:
    """The pid of the `cdc run` holding the slot's leader lock now."""
    with deployment.connect() as conn:
        row = conn.execute(
            f"SELECT application_name FROM ({ADVISORY_LOCK_HOLDERS}) holders",
            (leader_lock_key(deployment.slot),),
        ).fetchone()
    return pid_of(row[0]) if row else None


def streaming_pid(deployment: Deployment) -> int | None:
    """The pid of the `cdc run` whose walsender reads the slot now."""
    with deployment.connect() as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_replication_slots s "
            "JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = %s",
            (deployment.slot,),
        ).fetchone()
    return pid_of(row[0]) if row else None


def term_holder(deployment: Deployment) -> str | None:
    """The instance whose term the sink's state row names."""
    with deployment.connect_sink() as conn:
        row = conn.execute(
            "SELECT leader FROM cdc_state WHERE slot = %s", (deployment.slot,)
        ).fetchone()
    return str(row[0]) if row and row[0] else None


def metrics_port(process: CdcProcess) -> int:
    def port() -> int | None:
        process.assert_running()
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", process.output)
        return int(found.group(1)) if found else None

    return int(wait_until(port, what="the metrics port in the log"))


def leader_gauge(deployment: Deployment, port: int) -> float | None:
    return scrape(port, "cdc_leader", f'slot="{deployment.slot}"')


def wait_standing_by(deployment: Deployment, process: CdcProcess) -> None:
    """`process` is a healthy, ready standby: /healthz and /readyz 200, cdc_leader 0."""
    port = metrics_port(process)

    def standing_by() -> bool:
        process.assert_running()
        return (
            leader_gauge(deployment, port) == 0
            and http_status(f"http://127.0.0.1:{port}/healthz") == 200
            and http_status(f"http://127.0.0.1:{port}/readyz") == 200
        )

    wait_until(standing_by, what=f"pid {process.process.pid} standing by")


class WalsenderWatch(threading.Thread):
    """Samples, every few milliseconds, how many wal2vec walsenders the database has."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(daemon=True)
        self._deployment = deployment
        self._halt = threading.Event()
        self.most = 0
        self.samples = 0

    def run(self) -> None:
        with self._deployment.connect() as conn:
            while not self._halt.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' "
                    "AND datname = current_database() AND application_name LIKE 'wal2vec %'"
                ).fetchone()
                assert row is not None
                self.most = max(self.most, int(row[0]))
                self.samples += 1
                self._halt.wait(0.005)  # the sampling period

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


@pytest.fixture
def audited(deployment: Deployment) -> Iterator[Deployment]:
    """The deployment, set up, with the audit trigger on its vectors and state tables."""
    deployment.extra["leader"] = LEADER
    result = deployment.cli("setup")
    assert result.returncode == 0, result.stdout + result.stderr
    with deployment.connect_sink() as conn:
        conn.execute(AUDIT_DDL.format(slot=psycopg.sql.quote(deployment.slot)))
    yield deployment


def audited_writes(deployment: Deployment) -> list[tuple[str, str | None]]:
    with deployment.connect_sink() as conn:
        rows = conn.execute("SELECT app, term FROM write_audit ORDER BY id").fetchall()
    return [(str(app), term) for app, term in rows]


def assert_one_writer_at_a_time(writes: list[tuple[str, str | None]]) -> int:
    """Each term's writes come from one instance, and terms never interleave; the number of
    terms that wrote."""
    writers: dict[str, str] = {}
    finished: set[str] = set()
    current: str | None = None
    for app, term in writes:
        assert app.startswith("wal2vec "), f"a write from {app!r}"
        assert term is not None, f"{app} wrote with no term claimed"
        assert writers.setdefault(term, app) == app, (
            f"term {term} of {writers[term]} also has writes by {app}"
        )
        if term != current:
            assert term not in finished, f"term {term} wrote again after a later term"
            if current is not None:
                finished.add(current)
            current = term
    return len(writers)


def start_standby(deployment: Deployment) -> CdcProcess:
    process = deployment.start()
    wait_standing_by(deployment, process)
    return process


def by_pid(processes: list[CdcProcess], pid: int | None) -> CdcProcess:
    [found] = [p for p in processes if p.process.pid == pid]
    return found


def takeover(deployment: Deployment, old: int, alive: list[CdcProcess]) -> tuple[int, float]:
    """Wait until another live instance streams the slot: (its pid, seconds it took)."""
    started = time.monotonic()
    pids = {p.process.pid for p in alive} - {old}

    def new_streamer() -> int | None:
        pid = streaming_pid(deployment)
        return pid if pid in pids and leader_pid(deployment) == pid else None

    pid = int(wait_until(new_streamer, what=f"a standby to take over from {old}"))
    return pid, time.monotonic() - started


def test_standbys_take_over_from_killed_and_frozen_leaders_with_one_writer_at_a_time(
    audited: Deployment,
) -> None:
    deployment = audited
    deployment.execute(
        "INSERT INTO articles (id, title, body) "
        "SELECT g, 'Title ' || g, 'Body ' || g FROM generate_series(1, 50) g"
    )
    first = deployment.start()
    deployment.wait_ready()
    wait_until(lambda: leader_pid(deployment) == first.process.pid, what="the first leader")
    assert leader_gauge(deployment, metrics_port(first)) == 1
    alive = [first, start_standby(deployment)]

    watch = WalsenderWatch(deployment)
    watch.start()
    workload = Workload(deployment, seed=13)
    workload.start()
    takeovers: list[float] = []
    try:
        for _ in range(KILLS):
            old = leader_pid(deployment)
            leader = by_pid(alive, old)
            assert old is not None
            wait_until(lambda: workload.transactions > 0, what="the workload writing")
            leader.process.send_signal(signal.SIGKILL)
            leader.process.wait(30)
            alive.remove(leader)
            new, seconds = takeover(deployment, old, alive)
            takeovers.append(seconds)
            assert leader_gauge(deployment, metrics_port(by_pid(alive, new))) == 1
            alive.append(start_standby(deployment))  # the pod restarted

        # A leader frozen rather than dead. Its lease runs out: the standby takes the lock,
        # ends the frozen one's sessions that held the sink's writer lock, and claims its term.
        # The frozen walsender cannot exit while its reader sleeps (its socket is full), so
        # the new leader streams once the old one wakes, finds its term over, and stands by.
        frozen = by_pid(alive, leader_pid(deployment))
        frozen.process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            [standby] = [p for p in alive if p is not frozen]
            instance = f"/{standby.process.pid}"
            wait_until(
                lambda: (term_holder(deployment) or "").endswith(instance),
                what="the standby's term claimed while the leader is frozen",
            )
            paused_takeover = time.monotonic() - frozen_at
        finally:
            frozen.process.send_signal(signal.SIGCONT)
        new, _ = takeover(deployment, frozen.process.pid, alive)
        assert new == standby.process.pid
        wait_standing_by(deployment, frozen)
    finally:
        workload.stop()
        watch.stop()

    deployment.wait_caught_up()
    assert assert_in_step(deployment) > 0
    terms = assert_one_writer_at_a_time(audited_writes(deployment))
    assert terms >= KILLS + 2, f"only {terms} terms wrote"
    assert watch.samples > 0 and watch.most == 1, f"{watch.most} walsenders at once"
    print(
        f"takeovers after kill -9: {[round(t, 2) for t in takeovers]} s; "
        f"after SIGSTOP (lease {LEADER['lease']} s): {paused_takeover:.2f} s"
    )
    for process in alive:
        assert process.stop() == 0, process.output


def test_a_leader_stopped_with_sigterm_hands_over_promptly(audited: Deployment) -> None:
    deployment = audited
    first = deployment.start()
    deployment.wait_ready()
    wait_until(lambda: leader_pid(deployment) == first.process.pid, what="the first leader")
    second = start_standby(deployment)

    started = time.monotonic()
    assert first.stop() == 0, first.output
    _, seconds = takeover(deployment, first.process.pid, [second])
    assert time.monotonic() - started < 30, f"handover took {seconds:.1f}s"
    deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'After the handover')")
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 1
    status = deployment.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert f"/{second.process.pid}" in (status.stdout), status.stdout
    assert second.stop() == 0, second.output


def test_a_write_after_the_term_ended_is_refused(audited: Deployment) -> None:
    """The fence alone, without the lock: a term claimed later makes the earlier term's next
    write fail, and roll back."""
    import asyncio

    from cdc.config import load_config
    from cdc.db import connect
    from cdc.errors import LeadershipLost
    from cdc.sink.fence import claim_term
    from cdc.sink.schema import SinkNames
    from cdc.sink.store import Sink
    from cdc.sink.writer import SinkWrite

    settings = load_config(audited.write_config())
    names = SinkNames.of(settings)

    async def scenario() -> Any:
        first = await connect(settings.sink_dsn, "sink")
        second = await connect(settings.sink_dsn, "sink")
        try:
            old = await claim_term(first, names, settings.source.slot, "old/1", patience=5)
            sink = await Sink.connect(first, settings, fence=old)
            await sink.mark_snapshot(done=False, checkpoint=None)  # within its term: fine
            await claim_term(second, names, settings.source.slot, "new/2", patience=5)
            with pytest.raises(LeadershipLost, match="new/2 has taken over"):
                await sink.writer.write(SinkWrite(truncated=["public.articles"]))
            with pytest.raises(LeadershipLost):
                await sink.mark_snapshot(done=True, checkpoint=None)
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())
    with audited.connect_sink() as conn:
        row = conn.execute(
            "SELECT leader, snapshot_done FROM cdc_state WHERE slot = %s", (audited.slot,)
        ).fetchone()
    assert row == ("new/2", False)


def test_a_claim_ends_a_frozen_instance_holding_the_writer_lock(audited: Deployment) -> None:
    """A write transaction left open by an instance that froze holds the writer lock: the
    claim waits `patience`, ends that instance's session (rolling its write back), and
    succeeds. A command's session holding the lock is not ended."""
    import asyncio

    from cdc.config import load_config
    from cdc.db import connect
    from cdc.sink.fence import claim_term, writer_lock_name
    from cdc.sink.schema import SinkNames

    settings = load_config(audited.write_config())
    names = SinkNames.of(settings)
    lock = writer_lock_name(names.schema, settings.source.slot)
    frozen = psycopg.connect(audited.sink_conninfo, application_name="wal2vec frozen/1")
    frozen.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
    frozen.execute("DELETE FROM cdc_embeddings")  # a write in flight, never committed

    async def claim() -> str:
        conn = await connect(settings.sink_dsn, "sink", application_name="wal2vec new/2")
        try:
            fence = await claim_term(conn, names, settings.source.slot, "new/2", patience=0.5)
            return fence.leader
        finally:
            await conn.close()

    try:
        assert asyncio.run(claim()) == "new/2"
        with pytest.raises(psycopg.OperationalError):
            frozen.execute("SELECT 1")
    finally:
        frozen.close()
    assert term_holder(audited) == "new/2"
