"""The application's migrations while `cdc run` streams: never blocked, and the sink stays in step.

wal2vec publishes whole tables, so no DDL of the application is refused for wal2vec's sake.
Changes to other columns are free; a type change of a configured column re-reads the table
(content hash decides what is embedded again); renaming or dropping a configured column stops
`cdc run` with exit 2, naming the column and what to do.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.backends import every_backend
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import CdcProcess, Deployment, Table, assert_in_step, wait_until

pytestmark = every_backend


def _write(deployment: Deployment, first: int, count: int = 3, body: str = "body") -> None:
    """Articles `first`.. with a title, a body (in column `body`) and an author."""
    deployment.execute(
        f"INSERT INTO articles (id, title, {body}, author_id) "
        "SELECT g, 'row ' || g, 'body of ' || g, g %% 3 "
        "FROM generate_series(%s::int, %s::int) g",
        (first, first + count - 1),
    )


def _edit(deployment: Deployment, article: int, body: str = "body") -> None:
    deployment.execute(
        f"UPDATE articles SET {body} = {body} || ' (edited)' WHERE id = %s", (article,)
    )


def _column_lists(deployment: Deployment) -> list[tuple[str, bool]]:
    """(table, whether published with a column list) for the deployment's publication."""
    with deployment.connect() as conn:
        rows = conn.execute(
            "SELECT c.relname, pr.prattrs IS NOT NULL FROM pg_publication_rel pr "
            "JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid "
            "WHERE p.pubname = %s ORDER BY 1",
            (deployment.slot,),
        ).fetchall()
    return [(str(r[0]), bool(r[1])) for r in rows]


def test_setup_turns_an_earlier_column_list_publication_into_a_whole_table_one(
    deployment: Deployment,
) -> None:
    if deployment.plugin == "wal2json":
        pytest.skip("about the publication's column lists; with wal2json there is no publication")
    # What earlier versions created: only the key, content and metadata columns.
    deployment.execute(
        f'CREATE PUBLICATION "{deployment.slot}" FOR TABLE articles (id, title, body, author_id)'
    )
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        deployment.execute("ALTER TABLE articles ALTER COLUMN body TYPE varchar(5000)")
    printed = deployment.cli("setup", "--print-sql")
    assert printed.returncode == 0, printed.stderr
    assert f'ALTER PUBLICATION "{deployment.slot}" SET TABLE "public"."articles";' in printed.stdout
    assert _column_lists(deployment) == [("articles", True)], "--print-sql changes nothing"
    done = deployment.cli("setup")
    assert done.returncode == 0, done.stderr
    assert _column_lists(deployment) == [("articles", False)]
    again = deployment.cli("setup", "--print-sql")
    assert "PUBLICATION" not in again.stdout, "nothing left to do"
    deployment.execute("ALTER TABLE articles ALTER COLUMN body TYPE varchar(5000)")


def test_a_table_added_to_the_configuration_is_published_at_start(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    deployment.execute("CREATE TABLE faqs (id int PRIMARY KEY, question text, answer text)")
    deployment.execute("INSERT INTO faqs VALUES (1, 'Why?', 'Because.')")
    assert deployment.cli("setup").returncode == 0
    publishes = deployment.plugin == "pgoutput"  # wal2json has no publication
    if publishes:
        assert _column_lists(deployment) == [("articles", False)]
    deployment.tables.append(Table("public.faqs", ["question", "answer"]))
    process = deployment.start()
    try:
        deployment.wait_ready()
        if publishes:
            assert _column_lists(deployment) == [("articles", False), ("faqs", False)]
        deployment.execute("INSERT INTO faqs VALUES (2, 'How?', 'Like this.')")
        _write(deployment, 1)
        deployment.wait_caught_up()
        wait_until(lambda: len(deployment.sink_rows()) == 5, 30, "the added table resynced")
        assert assert_in_step(deployment) == 5
    finally:
        assert process.stop() == 0, process.output


def test_ddl_of_other_columns_and_table_rewrites_mid_stream(
    deployment: Deployment, running: CdcProcess, endpoint: FakeOpenAIServer
) -> None:
    _write(deployment, 1)
    deployment.wait_caught_up()
    migrations = [
        "ALTER TABLE articles ADD COLUMN slug text",
        "ALTER TABLE articles ALTER COLUMN slug TYPE varchar(200)",
        "ALTER TABLE articles ALTER COLUMN views TYPE bigint",  # rewrites the table
        "ALTER TABLE articles DROP COLUMN slug",
        "VACUUM FULL articles",
        "CLUSTER articles USING articles_pkey",
        "ALTER TABLE articles ADD COLUMN tags text[] NOT NULL DEFAULT '{}'",
    ]
    for step, migration in enumerate(migrations):
        _edit(deployment, 1)
        deployment.execute("UPDATE articles SET views = views + 1 WHERE id = 2")
        deployment.execute(migration)
        _write(deployment, 10 * (step + 1))
        deployment.execute("UPDATE articles SET views = views + 1 WHERE id = 3")
        _edit(deployment, 10 * (step + 1))
        deployment.wait_caught_up()
        running.assert_running()
    before = endpoint.requests
    deployment.execute("UPDATE articles SET views = views + 1, tags = '{a}'")
    deployment.wait_caught_up()
    assert endpoint.requests == before, "changes to other columns embed nothing"
    assert assert_in_step(deployment) == 3 + 3 * len(migrations)


def _stopped_naming(process: CdcProcess, column: str) -> str:
    """`cdc run` exits 2 with a message naming `column` and what to do, and no traceback."""
    code = process.process.wait(60)
    output = process.output
    assert code == 2, output
    assert "Traceback" not in output, output
    assert column in output and "cdc setup" in output, output
    return output


def test_renamed_content_column_stops_run_naming_it_then_the_new_name_streams_on(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    process = deployment.start()
    deployment.wait_ready()
    _write(deployment, 1)
    deployment.wait_caught_up()
    deployment.execute("ALTER TABLE articles RENAME COLUMN body TO text")
    _write(deployment, 10, body="text")
    output = _stopped_naming(process, "body")
    assert "renamed or dropped" in output, output
    # What the message asks for: the configuration follows the table.
    deployment.tables[0].columns = ["title", "text"]
    setup = deployment.cli("setup")
    assert setup.returncode == 0, setup.stderr
    before = endpoint.requests
    process = deployment.start()
    try:
        _write(deployment, 20, body="text")
        _edit(deployment, 1, body="text")
        deployment.wait_caught_up()
        assert assert_in_step(deployment) == 9
    finally:
        assert process.stop() == 0, process.output
    assert endpoint.requests > before


def test_rename_right_behind_unapplied_writes_loses_none_of_them(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    process = deployment.start()
    deployment.wait_ready()
    # The writes just before the rename are still being embedded when the stream meets the new
    # name, so they are not applied; after the restart they come again under the old name.
    endpoint.latency = 1.0
    _write(deployment, 1)
    _edit(deployment, 1)
    deployment.execute("ALTER TABLE articles RENAME COLUMN body TO text")
    _write(deployment, 10, body="text")
    _stopped_naming(process, "body")
    endpoint.latency = 0.0
    deployment.tables[0].columns = ["title", "text"]
    assert deployment.cli("setup").returncode == 0
    process = deployment.start()
    try:
        deployment.wait_caught_up()
        assert assert_in_step(deployment) == 6
    finally:
        assert process.stop() == 0, process.output


def test_dropped_content_column_stops_run_naming_it_then_resync_re_embeds_without_it(
    deployment: Deployment,
) -> None:
    process = deployment.start()
    deployment.wait_ready()
    _write(deployment, 1)
    deployment.wait_caught_up()
    deployment.execute("ALTER TABLE articles DROP COLUMN body")
    deployment.execute("UPDATE articles SET title = 'retitled' WHERE id = 2")
    output = _stopped_naming(process, "body")
    assert "cdc resync --table public.articles" in output, output
    deployment.tables[0].columns = ["title"]
    assert deployment.cli("setup").returncode == 0
    process = deployment.start()
    try:
        deployment.wait_caught_up()  # streaming again, so the resync is asked of it
        resync = deployment.cli("resync", "--table", "public.articles")
        assert resync.returncode == 0, resync.stdout + resync.stderr
        deployment.wait_caught_up()
        assert assert_in_step(deployment) == 3
    finally:
        assert process.stop() == 0, process.output


def test_dropped_metadata_column_while_stopped_is_refused_at_start_naming_it(
    deployment: Deployment,
) -> None:
    assert deployment.cli("setup").returncode == 0
    deployment.execute("ALTER TABLE articles DROP COLUMN author_id")
    process = deployment.start()
    output = _stopped_naming(process, "author_id")
    assert "metadata" in output, output


def _db_now(deployment: Deployment) -> str:
    """The sink's clock, which stamps cdc_snapshots.finished_at."""
    with deployment.connect_sink() as conn:
        row = conn.execute("SELECT now()::text").fetchone()
    assert row is not None
    return str(row[0])


def _resynced_since(deployment: Deployment, since: str) -> bool:
    """A per-table resync of articles finished after `since` (the sink's clock)."""
    with deployment.connect_sink() as conn:
        row = conn.execute(
            "SELECT kind = 'resync' AND status = 'done' AND finished_at > %s::timestamptz "
            "FROM cdc_snapshots WHERE slot = %s AND source_table = 'public.articles'",
            (since, deployment.slot),
        ).fetchone()
    return bool(row and row[0])


def test_content_column_type_change_keeping_its_text_embeds_nothing(
    deployment: Deployment, running: CdcProcess, endpoint: FakeOpenAIServer
) -> None:
    _write(deployment, 1, count=5)
    deployment.wait_caught_up()
    before = endpoint.requests
    since = _db_now(deployment)
    deployment.execute("ALTER TABLE articles ALTER COLUMN body TYPE varchar(5000)")
    deployment.execute("ALTER TABLE articles ALTER COLUMN author_id TYPE bigint")
    wait_until(lambda: _resynced_since(deployment, since), 60, "the table re-read")
    deployment.wait_caught_up()
    assert endpoint.requests == before, "the same text is not embedded again"
    assert "column types changed" in running.output
    _write(deployment, 10)
    _edit(deployment, 2)
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 8


def test_type_change_rewriting_content_re_embeds_only_the_rows_whose_text_changed(
    deployment: Deployment, running: CdcProcess, endpoint: FakeOpenAIServer
) -> None:
    deployment.execute(
        "INSERT INTO articles (id, title, body, author_id) VALUES "
        "(1, 'Tea', 'Brew it.', 1), (2, 'A very long title', 'Read it.', 2), (3, 'Cake', NULL, 3)"
    )
    deployment.wait_caught_up()
    endpoint.reset()
    since = _db_now(deployment)
    # A rewrite: the WAL carries no row of it, and only row 2's text changes.
    deployment.execute(
        "ALTER TABLE articles ALTER COLUMN title TYPE varchar(8) USING left(title, 8), "
        "ALTER COLUMN author_id TYPE numeric(6, 2)"
    )
    wait_until(lambda: _resynced_since(deployment, since), 60, "the table re-read")
    deployment.wait_caught_up()
    assert endpoint.inputs == ["A very l\n\nRead it."]
    metadata = {r["source_id"]: r["metadata"] for r in deployment.sink_rows()}
    assert metadata["3"] == {"author_id": "3.00"}, "metadata follows the new text form"
    assert assert_in_step(deployment) == 3


def test_setup_adds_the_column_types_column_to_an_earlier_state_table(
    deployment: Deployment,
) -> None:
    assert deployment.cli("setup").returncode == 0
    deployment.execute_sink("ALTER TABLE cdc_snapshots DROP COLUMN column_types")  # as before
    upgrade = 'ALTER TABLE "public"."cdc_snapshots" ADD COLUMN IF NOT EXISTS column_types jsonb'
    assert upgrade in deployment.cli("setup", "--print-sql").stdout
    assert deployment.cli("setup").returncode == 0
    assert upgrade not in deployment.cli("setup", "--print-sql").stdout


def test_renamed_table_stops_run_naming_it(deployment: Deployment) -> None:
    process = deployment.start()
    deployment.wait_ready()
    _write(deployment, 1)
    deployment.wait_caught_up()
    deployment.execute("ALTER TABLE articles RENAME TO posts")
    _stopped_naming(process, "public.articles")


def test_unchanged_toast_of_an_unconfigured_column_is_no_concern(
    deployment: Deployment, running: CdcProcess, endpoint: FakeOpenAIServer
) -> None:
    # Published whole, the table's other columns reach the decoder too; an update resends
    # none of their out-of-line values, and the projection drops the placeholders.
    deployment.execute("ALTER TABLE articles ADD COLUMN notes text")
    deployment.execute("ALTER TABLE articles ALTER COLUMN notes SET STORAGE EXTERNAL")
    deployment.execute(
        "INSERT INTO articles (id, title, body, notes) VALUES (1, 'Tea', 'Brew it.', %s)",
        ("n" * 20_000,),
    )
    deployment.wait_caught_up()
    before = endpoint.requests
    deployment.execute("UPDATE articles SET views = 1 WHERE id = 1")
    deployment.wait_caught_up()
    assert endpoint.requests == before
    deployment.execute("UPDATE articles SET title = 'Green tea' WHERE id = 1")
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 1
