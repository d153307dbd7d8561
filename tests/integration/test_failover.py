"""`cdc run` through a primary failover: PostgreSQL 17+ failover slots on a primary + standby.

With `source.failover: true` the slot is synchronised to the standby; `source.dsn` names both
servers with `target_session_attrs=read-write`, so the reconnect loop finds whichever takes
writes. After the primary crashes and the standby is promoted, the same `cdc run` goes on from
the promoted server's copy of the slot: no new snapshot, and the sink ends in step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc.config import SourceConfig
from tests.conftest import ARTICLES_DDL
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import CdcProcess, Deployment, Table, assert_in_step, wait_until
from tests.pg import unique_slot
from tests.replica import ReplicaPair, ReplicaPool, replica_pool

# Until `source.failover` is in the configuration, the test marks the slot itself.
HAS_FAILOVER_KEY = "failover" in SourceConfig.model_fields
SNAPSHOT_ROWS = 40


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
def deployment_on_pair(
    pair: ReplicaPair, endpoint: FakeOpenAIServer, tmp_path: Path
) -> Iterator[Deployment]:
    """A database on the pair with an `articles` table, streamed with `source.failover` on
    through the two-host DSN."""
    name = pair.create_database()
    dep = Deployment(
        dsn=pair.dsn(name),
        slot=unique_slot(),
        base_url=endpoint.url,
        workdir=tmp_path,
        tables=[Table("public.articles", ["title", "body"], ["author_id"])],
        extra={"source": {"failover": True}} if HAS_FAILOVER_KEY else {},
    )
    try:
        dep.execute(ARTICLES_DDL)
        yield dep
    finally:
        dep.stop_all()
        if not pair.failed_over:
            pair.primary_server.drop_database(name)


def mark_failover(deployment: Deployment) -> None:
    """`ALTER_REPLICATION_SLOT ... (FAILOVER true)`, what `source.failover` does, for as long
    as the configuration lacks it. The slot must be idle: the caller stops `cdc run` first."""
    with psycopg.connect(deployment.dsn, replication="database", autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER_REPLICATION_SLOT {} (FAILOVER true)").format(
                sql.Identifier(deployment.slot)
            )
        )


def start_streaming(deployment: Deployment) -> CdcProcess:
    """`cdc run` past its snapshot, on a slot marked for failover."""
    process = deployment.start()
    deployment.wait_ready()
    if not HAS_FAILOVER_KEY:
        assert process.stop() == 0, process.output
        mark_failover(deployment)
        process = deployment.start()
        deployment.wait_ready()
    return process


def slot_row(deployment: Deployment) -> dict[str, Any] | None:
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


def write_some(deployment: Deployment, start: int) -> None:
    """Inserts, edits of the content, an edit of metadata only, and deletes."""
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) "
        "SELECT g, 'title ' || g, 'body ' || g, g %% 5 FROM generate_series(%s::int, %s::int) g",
        (start, start + 19),
    )
    deployment.execute(
        "UPDATE articles SET body = body || ' edited' WHERE id %% 3 = 0 AND id >= %s", (start,)
    )
    deployment.execute("UPDATE articles SET author_id = 9 WHERE id %% 4 = 0 AND id >= %s", (start,))
    deployment.execute("DELETE FROM articles WHERE id %% 7 = 0 AND id >= %s", (start,))
    # And some rows written before this batch.
    deployment.execute("UPDATE articles SET title = title || ' again' WHERE id IN (1, 2, 3)")
    deployment.execute("DELETE FROM articles WHERE id = %s", (start - 99,))


def test_cdc_run_goes_on_from_the_promoted_standby_without_a_new_snapshot(
    pair: ReplicaPair, deployment_on_pair: Deployment, endpoint: FakeOpenAIServer
) -> None:
    dep = deployment_on_pair
    dep.execute(
        "INSERT INTO articles (id, title, body) "
        "SELECT g, 'snap ' || g, 'body ' || g FROM generate_series(1, %s::int) g",
        (SNAPSHOT_ROWS,),
    )
    process = start_streaming(dep)
    write_some(dep, 100)
    dep.wait_caught_up()
    assert slot_row(dep) == {"failover": True, "synced": False, "active": True}
    copy = pair.wait_slot_synced(dep.slot)
    assert copy["failover"] and copy["invalidation_reason"] is None, copy
    assert_in_step(dep)

    pair.crash_primary()
    promoting = time.monotonic()
    pair.promote()
    promoted = time.monotonic()
    pair.clear_synchronized_standby_slots()
    dep.execute("INSERT INTO articles (id, title, body) VALUES (1000, 'after', 'the failover')")
    written = time.monotonic()
    wait_until(
        lambda: process.assert_running() or vector_of(dep, "1000", "after\n\nthe failover"),
        what="the first vector after the failover",
    )
    arrived = time.monotonic()
    print(
        f"failover: promote took {promoted - promoting:.2f}s; first new vector "
        f"{arrived - promoted:.2f}s after the promotion ({arrived - written:.2f}s after its write)"
    )
    write_some(dep, 200)
    dep.wait_caught_up()

    process.assert_running()  # the same process, never restarted
    assert dep.snapshot_done()
    # One snapshot in all, before the failover ("created slot at" starts one).
    assert sum(p.output.count("created slot at") for p in dep.processes) == 1, process.output
    assert "starting again" in process.output
    assert_in_step(dep)
    assert dep.dead_letters() == []
    assert process.stop() == 0, process.output
