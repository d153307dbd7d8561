"""`cdc setup`: the DDL for review, idempotence, and what it creates."""

from __future__ import annotations

from tests.harness import Deployment, assert_in_step, wait_until


def test_print_sql_shows_the_ddl_and_changes_nothing(deployment: Deployment) -> None:
    result = deployment.cli("setup", "--print-sql")
    assert result.returncode == 0, result.stderr
    sql = result.stdout
    # The whole table, no column list: a column list would block the application's migrations.
    assert 'CREATE PUBLICATION "' in sql and 'FOR TABLE "public"."articles";' in sql
    assert "USING hnsw (embedding vector_cosine_ops)" in sql
    assert "embedding vector(32) NOT NULL" in sql and "cdc_dead_letters" in sql
    with deployment.connect() as conn:
        assert conn.execute("SELECT to_regclass('cdc_embeddings')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)


def test_setup_is_idempotent_and_publishes_whole_tables(deployment: Deployment) -> None:
    first = deployment.cli("setup")
    assert first.returncode == 0, first.stderr
    assert "public.articles" in first.stdout and "key (id)" in first.stdout
    again = deployment.cli("setup", "--print-sql")
    assert "PUBLICATION" not in again.stdout, "nothing left to do after setup"
    deployment.tables[0].metadata = ["author_id", "views"]
    changed = deployment.cli("setup", "--print-sql")
    assert "PUBLICATION" not in changed.stdout, "other columns need no publication change"
    with deployment.connect() as conn:
        row = conn.execute("SELECT attnames FROM pg_publication_tables").fetchone()
    assert row is not None and sorted(row[0]) == ["author_id", "body", "id", "title", "views"]


def test_halfvec_sink(deployment: Deployment) -> None:
    deployment.extra = {"sink": {"vector_type": "halfvec"}}
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'half precision')")
        # Enough rows in one transaction for the staged (binary COPY) write path.
        deployment.execute(
            "INSERT INTO articles (id, title) SELECT g, 'half ' || g FROM generate_series(2, 201) g"
        )
        deployment.wait_caught_up()
        with deployment.connect() as conn:
            kind = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'cdc_embeddings'::regclass AND attname = 'embedding'"
            ).fetchone()
        assert kind == ("halfvec(32)",)
        assert len(deployment.sink_rows()) == 201
    finally:
        assert process.stop() == 0, process.output


def test_streamer_reconnects_when_its_replication_connection_is_killed(
    deployment: Deployment,
) -> None:
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'before')")
        deployment.wait_caught_up()
        with deployment.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (deployment.slot,),
            )
        deployment.execute("INSERT INTO articles (id, title) VALUES (2, 'after')")
        deployment.wait_caught_up()
        assert assert_in_step(deployment) == 2
        wait_until(lambda: "starting again" in process.output, what="the reconnect logged")
    finally:
        assert process.stop() == 0, process.output


def test_sink_table_with_other_dimensions_is_refused_naming_both(deployment: Deployment) -> None:
    assert deployment.cli("setup").returncode == 0
    deployment.extra = {"embedding": {"dimensions": 64}}
    result = deployment.cli("setup")
    assert result.returncode == 2
    assert "vector(32)" in result.stderr and "vector(64)" in result.stderr


def test_teardown_refuses_a_running_slot_then_drops_it_and_keeps_the_vectors(
    deployment: Deployment,
) -> None:
    process = deployment.start()
    deployment.wait_ready()
    deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'kept')")
    deployment.wait_caught_up()
    busy = deployment.cli("teardown")
    assert busy.returncode == 1 and "in use" in busy.stderr
    assert process.stop() == 0
    done = deployment.cli("teardown", "--all")
    assert done.returncode == 0, done.stderr
    assert "dropped slot" in done.stdout and "dropped publication" in done.stdout
    with deployment.connect() as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (deployment.slot,)
        ).fetchone() == (0,)
        for table in ("cdc_state", "cdc_snapshots"):
            assert conn.execute(
                f"SELECT count(*) FROM {table} WHERE slot = %s", (deployment.slot,)
            ).fetchone() == (0,), f"{table} still remembers the slot"
    assert len(deployment.sink_rows()) == 1
    status = deployment.cli("status")
    assert status.returncode == 1 and "does not exist" in status.stdout
