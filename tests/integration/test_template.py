"""Per-table `template`: the content is a format string over the row's columns."""

from __future__ import annotations

from tests.backends import every_backend
from tests.harness import Deployment, assert_in_step

TEMPLATE = "Title: {title}\n\n{body}"


@every_backend
def test_template_content_is_snapshotted_streamed_published_and_verified(
    deployment: Deployment,
) -> None:
    deployment.tables[0].columns = []
    deployment.tables[0].template = TEMPLATE
    deployment.execute(
        "INSERT INTO articles (id, title, body) VALUES "
        "(1, 'Tea', 'Brew it.'), (2, NULL, NULL), (3, 'Only a title', NULL)"
    )
    process = deployment.start()
    try:
        deployment.wait_caught_up()
        rows = {r["source_id"]: r["content"] for r in deployment.sink_rows()}
        # All of a template's columns NULL: no content, no vector (not the bare literal text).
        assert rows == {"1": "Title: Tea\n\nBrew it.", "3": "Title: Only a title\n\n"}
        deployment.execute("UPDATE articles SET body = 'now has a body' WHERE id = 2")
        deployment.execute("UPDATE articles SET title = NULL, body = '' WHERE id = 3")
        deployment.execute("INSERT INTO articles (id, title, body) VALUES (4, 'New', 'row')")
        deployment.wait_caught_up()
        rows = {r["source_id"]: r["content"] for r in deployment.sink_rows()}
        assert rows == {
            "1": "Title: Tea\n\nBrew it.",
            "2": "Title: \n\nnow has a body",
            "4": "Title: New\n\nrow",
        }
        assert assert_in_step(deployment) == 3
        if deployment.plugin == "pgoutput":  # wal2json has no publication: it sends every column
            with deployment.connect() as conn:
                row = conn.execute("SELECT attnames FROM pg_publication_tables").fetchone()
            assert row is not None and {"body", "id", "title"} <= set(row[0])
        verified = deployment.cli("verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        assert process.stop() == 0, process.output


@every_backend
def test_unchanged_toast_in_a_template_column_is_fetched_not_embedded_as_placeholder(
    deployment: Deployment,
) -> None:
    deployment.tables[0].columns = []
    deployment.tables[0].template = TEMPLATE
    deployment.tables[0].options["chunk_tokens"] = 1000  # the big body makes several chunks
    # Stored out of line uncompressed, and not resent by updates of other columns.
    deployment.execute("ALTER TABLE articles ALTER COLUMN body SET STORAGE EXTERNAL")
    process = deployment.start()
    try:
        deployment.wait_ready()
        big = "x" * 30_000
        deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Big', %s)", (big,))
        deployment.wait_caught_up()
        deployment.execute("UPDATE articles SET title = 'Bigger' WHERE id = 1")
        deployment.wait_caught_up()
        assert assert_in_step(deployment) > 1
        contents = "".join(r["content"] for r in deployment.sink_rows())
        assert contents.startswith("Title: Bigger\n\n") and contents.count("x") == 30_000
    finally:
        assert process.stop() == 0, process.output


def test_unknown_placeholder_is_named_and_setup_exits_2(deployment: Deployment) -> None:
    deployment.tables[0].columns = []
    deployment.tables[0].template = "{title}: {bdy}"
    result = deployment.cli("setup")
    assert result.returncode == 2
    assert "public.articles: column 'bdy' (tables[].template) is not in the table" in result.stderr


def test_columns_and_template_together_exit_2_naming_the_table(deployment: Deployment) -> None:
    deployment.tables[0].template = TEMPLATE  # columns stay set too
    deployment.tables[0].options = {"columns": ["title"]}
    result = deployment.cli("setup")
    assert result.returncode == 2
    assert "tables.0: public.articles: set exactly one of columns" in result.stderr
