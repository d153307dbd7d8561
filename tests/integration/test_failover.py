"""`cdc run` through a primary failover: PostgreSQL 17+ failover slots on a primary + standby.

With `source.failover: true` the slot is synchronised to the standby; `source.dsn` names both
servers with `target_session_attrs=read-write`, so the reconnect loop finds whichever takes
writes. After the primary crashes and the standby is promoted, the same `cdc run` goes on from
the promoted server's copy of the slot: no new snapshot, and the sink ends in step.

And what a user meets on the way: a standby copy that is not usable yet, a promoted standby
still naming its old primary's slot in `synchronized_standby_slots`, a standby that is down,
and a sink write the standby never received.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.backends import ARTICLES_DDL
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import (
    DIMENSIONS,
    CdcProcess,
    Deployment,
    Table,
    assert_in_step,
    free_port,
    scrape,
    wait_until,
)
from tests.pg import unique_slot
from tests.replica import STANDBY_SLOT, Node, ReplicaPair, ReplicaPool, replica_pool

SNAPSHOT_ROWS = 40


class GatedEndpoint(FakeOpenAIServer):
    """The fake endpoint, with a gate: while `hold()` is on, requests wait (counted in
    `held`) until `release()`. How a test keeps `cdc run` between reading a change and
    writing it to the sink."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._open = threading.Event()
        self._open.set()
        self._held = 0
        self._held_lock = threading.Lock()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @property
    def held(self) -> int:
        with self._held_lock:
            return self._held

    def wait_latency(self) -> None:
        if not self._open.is_set():
            with self._held_lock:
                self._held += 1
            self._open.wait()
        super().wait_latency()

    def stop(self) -> None:
        self.release()  # a held request must not keep the handler threads from joining
        super().stop()


@pytest.fixture
def endpoint() -> Iterator[GatedEndpoint]:
    with GatedEndpoint(dimensions=DIMENSIONS) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPool]:
    """This module's primary + standby pairs (a failover uses one up; the next test gets a
    new one), all stopped at the end of the module."""
    with replica_pool(tmp_path_factory.mktemp("replicas")) as pool:
        yield pool


@pytest.fixture
def pair(replicas: ReplicaPool) -> ReplicaPair:
    return replicas.pair()


@pytest.fixture
def deployment(pair: ReplicaPair, endpoint: GatedEndpoint, tmp_path: Path) -> Iterator[Deployment]:
    """A database on the pair with an `articles` table, streamed with `source.failover` on
    through the two-host DSN."""
    name = pair.create_database()
    dep = Deployment(
        dsn=pair.dsn(name),
        slot=unique_slot(),
        base_url=endpoint.url,
        workdir=tmp_path,
        tables=[Table("public.articles", ["title", "body"], ["author_id"])],
        extra={"source": {"failover": True}},
    )
    try:
        dep.execute(ARTICLES_DDL)
        dep.execute(
            "INSERT INTO articles (id, title, body) "
            "SELECT g, 'snap ' || g, 'body ' || g FROM generate_series(1, %s::int) g",
            (SNAPSHOT_ROWS,),
        )
        yield dep
    finally:
        dep.stop_all()
        if not pair.failed_over:
            pair.primary_server.drop_database(name)


# -- helpers ----------------------------------------------------------------------------------


def slot_row(deployment: Deployment) -> dict[str, Any] | None:
    """The slot on the server `deployment.dsn` reaches (the primary, or the promoted one)."""
    with deployment.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT failover, synced, active FROM pg_replication_slots WHERE slot_name = %s",
            (deployment.slot,),
        )
        return cur.fetchone()


def vector_of(deployment: Deployment, source_id: str, content: str) -> bool:
    """Whether the sink holds `content`'s vector for `articles` row `source_id`."""
    with deployment.connect() as conn:
        row = conn.execute(
            "SELECT content FROM cdc_embeddings WHERE source_table = 'public.articles' "
            "AND source_id = %s AND chunk = 0",
            (source_id,),
        ).fetchone()
    return row is not None and row[0] == content


def wait_vector(deployment: Deployment, process: CdcProcess, source_id: str, content: str) -> None:
    wait_until(
        lambda: process.assert_running() or vector_of(deployment, source_id, content),
        what=f"the vector of row {source_id}",
    )


def write_some(deployment: Deployment, start: int) -> None:
    """Inserts, edits of the content, edits of metadata only, and deletes (of new and of
    older rows)."""
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) SELECT g, 'title ' || g, "
        "'body ' || g, g %% 5 FROM generate_series(%s::int, %s::int) g",
        (start, start + 19),
    )
    deployment.execute(
        "UPDATE articles SET body = body || ' edited' WHERE id %% 3 = 0 AND id >= %s", (start,)
    )
    deployment.execute("UPDATE articles SET author_id = 9 WHERE id %% 4 = 0 AND id >= %s", (start,))
    deployment.execute("DELETE FROM articles WHERE id %% 7 = 0 AND id >= %s", (start,))
    deployment.execute("UPDATE articles SET title = title || ' again' WHERE id IN (1, 2, 3)")
    deployment.execute("DELETE FROM articles WHERE id = %s", (start - 99,))


def status(deployment: Deployment) -> tuple[int, dict[str, Any]]:
    result = deployment.cli("status", "--json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def streaming_and_synced(pair: ReplicaPair, deployment: Deployment) -> CdcProcess:
    """`cdc run` past its snapshot, caught up after some writes, its slot's standby copy
    synced: ready for a failover."""
    process = deployment.start()
    deployment.wait_ready()
    write_some(deployment, 100)
    deployment.wait_caught_up()
    assert slot_row(deployment) == {"failover": True, "synced": False, "active": True}
    copy = pair.wait_slot_synced(deployment.slot)
    assert copy["failover"] and copy["invalidation_reason"] is None, copy
    assert_in_step(deployment)
    return process


def waiting_for_standby(server: Node, deployment: Deployment) -> bool:
    """Whether the walsender of the slot on `server` waits for a standby to confirm WAL before
    it sends it on (`synchronized_standby_slots`)."""
    return bool(
        server.value(
            "SELECT count(*) > 0 FROM pg_replication_slots s "
            "JOIN pg_stat_activity a ON a.pid = s.active_pid "
            "WHERE s.slot_name = %s AND a.wait_event = 'WaitForStandbyConfirmation'",
            (deployment.slot,),
        )
    )


def dep_value(deployment: Deployment, query: str, *params: Any) -> Any:
    with deployment.connect() as conn:
        row = conn.execute(query, params or None).fetchone()
        return None if row is None else row[0]


def snapshots_taken(deployment: Deployment) -> int:
    """Snapshots the deployment's `cdc run`s started: each creates the slot first."""
    return sum(p.output.count("created slot at") for p in deployment.processes)


# -- the failover -----------------------------------------------------------------------------


def retries_in(output: str) -> int:
    """How often `cdc run` tried again: to start a session, or to take the lead."""
    return output.count("starting again") + output.count("trying again in")


@pytest.mark.parametrize("retries", [0, 4], ids=["prompt-promotion", "slow-promotion"])
def test_cdc_run_goes_on_from_the_promoted_standby_without_a_new_snapshot(
    pair: ReplicaPair, deployment: Deployment, retries: int
) -> None:
    dep = deployment
    port = free_port()
    dep.extra["metrics"] = {"port": port, "poll_interval": 0.2}
    process = streaming_and_synced(pair, dep)
    code, report = status(dep)
    assert code == 0 and report["healthy"], report
    assert report["failover"]["ready"] and report["failover"]["standby_synced"], report

    pair.crash_primary()
    # A slow promotion (a failover manager's timeouts): meanwhile `cdc run` tries to start
    # again and finds no writable server: its session, then, once its leader lock's session
    # is found gone too, its bid for the lead, every second.
    wait_until(
        lambda: process.assert_running() or retries_in(process.output) > retries,
        what=f"{retries} retries after the lost connection",
    )
    promoting = time.monotonic()
    pair.promote()
    promoted = time.monotonic()
    pair.clear_synchronized_standby_slots()
    dep.execute("INSERT INTO articles (id, title, body) VALUES (1000, 'after', 'the failover')")
    written = time.monotonic()
    wait_vector(dep, process, "1000", "after\n\nthe failover")
    arrived = time.monotonic()
    print(
        f"\nfailover ({retries} retries before the promotion): promotion took "
        f"{promoted - promoting:.2f}s; the first new vector came {arrived - promoted:.2f}s "
        f"after it ({arrived - written:.2f}s after its write)"
    )
    write_some(dep, 200)
    dep.wait_caught_up()

    process.assert_running()  # the same process, never restarted
    assert dep.snapshot_done()
    assert snapshots_taken(dep) == 1, process.output
    assert retries_in(process.output) > retries
    # The slot is the standby's synchronised copy (`synced` stays true once promoted).
    assert slot_row(dep) == {"failover": True, "synced": True, "active": True}
    assert_in_step(dep)
    assert dep.dead_letters() == []
    # The slot monitor lost the old primary, and found the promoted server too.
    again = f"polling the state of slot {dep.slot} again"
    wait_until(lambda: again in process.output, what="the monitor polling again")
    assert scrape(port, "cdc_slot_failover") == 1.0
    # The promoted server has no standby yet: status says the slot is exposed again.
    code, report = status(dep)
    assert code != 0 and report["failover"]["standby"] is None, report
    assert any("no standby answers" in p for p in report["problems"]), report
    assert process.stop() == 0, process.output


# -- what a user meets on the way -------------------------------------------------------------


def test_a_promoted_standby_still_naming_the_old_primarys_slot_holds_the_stream_until_cleared(
    pair: ReplicaPair, deployment: Deployment
) -> None:
    """The trap: a standby inherits its primary's `synchronized_standby_slots` ('sb1', the
    primary's slot for it). Promoted, it has no such slot, and the walsender of every failover
    slot waits for it: `cdc run` stays connected and receives nothing."""
    dep = deployment
    process = streaming_and_synced(pair, dep)
    pair.crash_primary()
    pair.promote()
    assert pair.standby.value("SHOW synchronized_standby_slots") == STANDBY_SLOT
    dep.execute("INSERT INTO articles (id, title, body) VALUES (1000, 'held', 'by sb1')")
    wait_until(
        lambda: process.assert_running() or waiting_for_standby(pair.standby, dep),
        what="the promoted server's walsender waiting for sb1",
    )
    # `cdc run` warned when its session started on the promoted server; status calls it a
    # problem and says how to clear it.
    warning = f"synchronized_standby_slots names {STANDBY_SLOT}, which this server does not have"
    assert warning in process.output, process.output
    code, report = status(dep)
    assert code != 0 and any(warning in p for p in report["problems"]), report
    assert not vector_of(dep, "1000", "held\n\nby sb1")

    pair.clear_synchronized_standby_slots()
    wait_vector(dep, process, "1000", "held\n\nby sb1")
    dep.wait_caught_up()
    assert snapshots_taken(dep) == 1, process.output
    assert_in_step(dep)
    assert process.stop() == 0, process.output


def test_a_standby_down_holds_the_failover_slot_on_the_primary_until_it_is_back(
    pair: ReplicaPair, deployment: Deployment
) -> None:
    """`synchronized_standby_slots` makes the primary send a failover slot's changes only once
    the standby has them: with the standby down (maintenance, a crash), wal2vec waits."""
    dep = deployment
    process = streaming_and_synced(pair, dep)
    pair.stop_standby()
    try:
        dep.execute("INSERT INTO articles (id, title, body) VALUES (1000, 'held', 'standby down')")
        wait_until(
            lambda: process.assert_running() or waiting_for_standby(pair.primary, dep),
            what="the walsender waiting for the standby",
        )
        code, report = status(dep)
        assert not vector_of(dep, "1000", "held\n\nstandby down")
    finally:
        pair.start_standby()
    wait_vector(dep, process, "1000", "held\n\nstandby down")
    dep.wait_caught_up()
    assert snapshots_taken(dep) == 1, process.output
    assert_in_step(dep)
    assert process.stop() == 0, process.output
    # What status said while the standby was down: not ready, and (the stream being held) why.
    assert code != 0 and not report["failover"]["ready"], report
    held = [p for p in report["problems"] if STANDBY_SLOT in p]
    assert held, f"status does not say the stream waits for standby slot {STANDBY_SLOT}: {report}"


def test_status_says_not_synced_while_the_standby_copy_is_temporary(
    pair: ReplicaPair, deployment: Deployment, endpoint: GatedEndpoint
) -> None:
    """During the snapshot the slot stands where it was created. Once the standby's catalog
    horizon is past it, the standby's copy stays temporary (`synced` true, `temporary` true),
    and a promotion drops a temporary slot: not a copy a failover could use."""
    dep = deployment
    endpoint.hold()
    process = dep.start()
    wait_until(
        lambda: process.assert_running() or endpoint.held >= 1, what="the snapshot's request"
    )

    def temporary_copy() -> bool:
        pair.primary.execute("SELECT txid_current()")  # moves the standby's horizon on
        pair.primary.execute("SELECT pg_log_standby_snapshot()")
        row = pair.standby_slot(dep.slot)
        return bool(row and row["temporary"])

    wait_until(temporary_copy, what="a temporary copy of the slot on the standby")
    copy = pair.standby_slot(dep.slot)
    assert copy is not None and copy["synced"] and copy["temporary"], copy
    during = status(dep)
    endpoint.release()
    dep.wait_ready()
    dep.wait_caught_up()
    pair.wait_slot_synced(dep.slot)
    code, report = status(dep)
    assert code == 0 and report["failover"]["ready"], report
    assert_in_step(dep)
    assert process.stop() == 0, process.output
    # What status said while the copy was temporary.
    code, report = during
    assert not report["failover"]["ready"], (
        f"status calls a temporary standby copy ready, which a promotion drops: {report}"
    )
    assert code != 0 and any("not synchronised" in p for p in report["problems"]), report


def test_a_sink_write_the_standby_never_got_is_not_lost_in_a_failover(
    pair: ReplicaPair, deployment: Deployment, endpoint: GatedEndpoint
) -> None:
    """The sink is on the source server (sink.dsn unset). `synchronized_standby_slots` keeps
    the slot's copy on the standby from passing WAL the standby has, but wal2vec's own sink
    commit for a change comes after the change: had the slot been confirmed past the change
    while the standby lacked that commit, the promoted server's slot would stand past a change
    its sink lacks, never to send it again. wal2vec confirms only once the standby has the
    sink commit (`StandbyGate`), so the promoted server sends the change again."""
    dep = deployment
    process = streaming_and_synced(pair, dep)
    endpoint.hold()
    dep.execute("INSERT INTO articles (id, title, body) VALUES (1000, 'only', 'on the primary')")
    change = dep.current_lsn()
    # `cdc run` has the change (so the standby has it too): it waits for its vector.
    wait_until(lambda: process.assert_running() or endpoint.held >= 1, what="the change read")
    walsender = pair.walsender_pid()
    os.kill(walsender, signal.SIGSTOP)  # the standby receives no WAL from here on
    crashed = False
    try:
        endpoint.release()
        # The sink commits its vector, on the primary only.
        wait_until(
            lambda: process.assert_running() or vector_of(dep, "1000", "only\n\non the primary"),
            what="the vector committed on the primary",
        )
        # A stopped walsender cannot act on the immediate shutdown's SIGQUIT: the postmaster
        # SIGKILLs it after 5 s, and the sink's commit is never sent.
        pair.crash_primary()
        crashed = True
    finally:
        if not crashed:
            os.kill(walsender, signal.SIGCONT)
    pair.promote()
    # The promoted server has the change but not the sink's commit of its vector, and the
    # slot there stands before the change: the primary never confirmed past it.
    assert dep_value(dep, "SELECT count(*) FROM articles WHERE id = 1000") == 1
    assert not vector_of(dep, "1000", "only\n\non the primary")
    assert not dep.confirmed_past(change), (
        "the slot was confirmed past a change the standby's sink lacks"
    )
    checkpoint = dep_value(
        dep, "SELECT checkpoint_lsn::text FROM cdc_state WHERE slot = %s", dep.slot
    )
    assert dep_value(dep, "SELECT %s::pg_lsn < %s::pg_lsn", checkpoint, change), checkpoint
    pair.clear_synchronized_standby_slots()
    dep.execute("INSERT INTO articles (id, title, body) VALUES (1001, 'after', 'the failover')")
    wait_vector(dep, process, "1001", "after\n\nthe failover")
    dep.wait_caught_up()
    assert snapshots_taken(dep) == 1, process.output
    assert vector_of(dep, "1000", "only\n\non the primary"), (
        f"row 1000 (committed at {change}) is on the promoted server but its vector is not: "
        f"the slot's copy passed it, while the sink's checkpoint there is {checkpoint}: its "
        "commit of the vector was lost with the old primary, and the slot does not send the "
        f"change again.\n{process.output}"
    )
    assert_in_step(dep)
    assert process.stop() == 0, process.output
