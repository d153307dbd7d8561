"""Large streamed transactions, TOAST, odd names and keys, and text from many scripts."""

from __future__ import annotations

import secrets

from tests.backends import every_backend
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import CdcProcess, Deployment, Table, assert_in_step

pytestmark = every_backend


def test_large_streamed_transaction_that_commits_lands_whole(
    deployment: Deployment, running: CdcProcess
) -> None:
    # logical_decoding_work_mem is 64kB on the test servers: the server spills this
    # transaction to disk and sends it once committed (neither plugin is asked to stream
    # transactions in progress), where wal2vec may apply it in parts.
    with deployment.connect() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO articles (id, title, body) "
            "SELECT g, 'streamed ' || g, repeat('body text ', 40) FROM generate_series(1, 600) g"
        )
        conn.execute("UPDATE articles SET title = 'changed in the same transaction' WHERE id = 7")
        conn.execute("DELETE FROM articles WHERE id = 8")
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 599
    assert "streamed 7" not in [r["content"].split("\n\n")[0] for r in deployment.sink_rows()]


def test_large_streamed_transaction_that_aborts_leaves_no_trace(
    deployment: Deployment, endpoint: FakeOpenAIServer, running: CdcProcess
) -> None:
    with deployment.connect() as conn:
        conn.autocommit = False
        conn.execute(
            "INSERT INTO articles (id, title, body) "
            "SELECT g, 'doomed ' || g, repeat('body text ', 40) FROM generate_series(1, 600) g"
        )
        conn.rollback()
    deployment.execute("INSERT INTO articles (id, title) VALUES (1000, 'survivor')")
    deployment.wait_caught_up()
    assert [r["source_id"] for r in deployment.sink_rows()] == ["1000"]
    assert not any(text.startswith("doomed") for text in endpoint.inputs)


def test_rolled_back_savepoint_inside_a_streamed_transaction_is_dropped(
    deployment: Deployment, running: CdcProcess
) -> None:
    with deployment.connect() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO articles (id, title, body) "
            "SELECT g, 'kept ' || g, repeat('x ', 200) FROM generate_series(1, 300) g"
        )
        conn.execute("SAVEPOINT s")
        conn.execute(
            "INSERT INTO articles (id, title, body) "
            "SELECT g, 'rolled back ' || g, repeat('y ', 200) FROM generate_series(301, 600) g"
        )
        conn.execute("ROLLBACK TO SAVEPOINT s")
    deployment.wait_caught_up()
    assert assert_in_step(deployment) == 300


def test_unchanged_toasted_body_is_fetched_not_embedded_as_a_placeholder(
    deployment: Deployment, endpoint: FakeOpenAIServer, running: CdcProcess
) -> None:
    deployment.execute("ALTER TABLE articles ALTER COLUMN body SET STORAGE EXTERNAL")
    body = secrets.token_hex(2500)  # 5000 incompressible characters: stored out of line
    deployment.execute(
        "INSERT INTO articles (id, title, body) VALUES (1, 'first title', %s)", (body,)
    )
    deployment.wait_caught_up()
    endpoint.reset()
    deployment.execute("UPDATE articles SET title = 'second title' WHERE id = 1")
    deployment.wait_caught_up()
    [row] = deployment.sink_rows()
    assert row["content"] == "second title\n\n" + body
    assert endpoint.inputs == ["second title\n\n" + body]
    assert_in_step(deployment)


def test_mixed_case_names_uuid_and_composite_keys(deployment: Deployment) -> None:
    deployment.execute('CREATE SCHEMA "Content"')
    deployment.execute(
        'CREATE TABLE "Content"."FAQ Entries" ("Id" uuid PRIMARY KEY, "Question" text, answer text)'
    )
    deployment.execute("CREATE TABLE posts (lang text, id int, body text, PRIMARY KEY (lang, id))")
    deployment.tables = [
        Table("Content.FAQ Entries", ["Question", "answer"]),
        Table("public.posts", ["body"]),
    ]
    deployment.execute(
        'INSERT INTO "Content"."FAQ Entries" VALUES '
        "('2f1c2d1e-0000-4000-8000-000000000001', 'How?', 'Like this.')"
    )
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute("INSERT INTO posts VALUES ('en', 42, 'hello'), ('fa', 42, 'سلام')")
        deployment.execute(
            'UPDATE "Content"."FAQ Entries" SET answer = %s', ("Like that, 你好 🎉",)
        )
        deployment.wait_caught_up()
        ids = {(r["source_table"], r["source_id"]) for r in deployment.sink_rows()}
        assert ids == {
            ("Content.FAQ Entries", "2f1c2d1e-0000-4000-8000-000000000001"),
            ("public.posts", '["en", "42"]'),
            ("public.posts", '["fa", "42"]'),
        }
        assert assert_in_step(deployment) == 3
    finally:
        assert process.stop() == 0, process.output


def test_persian_chinese_and_emoji_text_is_embedded_exactly(
    deployment: Deployment, endpoint: FakeOpenAIServer, running: CdcProcess
) -> None:
    texts = ["پایگاه داده‌ها و بردارها", "数据库与向量检索", "emoji 🧭🚀 and ZWJ 👩‍💻"]
    for number, text in enumerate(texts, start=1):
        deployment.execute(
            "INSERT INTO articles (id, title, body) VALUES (%s, %s, %s)", (number, text, text)
        )
    deployment.wait_caught_up()
    assert sorted(r["content"] for r in deployment.sink_rows()) == sorted(
        f"{t}\n\n{t}" for t in texts
    )
    assert assert_in_step(deployment) == 3


def test_replica_identity_full_table_keeps_its_primary_key_as_source_id(
    deployment: Deployment,
) -> None:
    deployment.execute("ALTER TABLE articles REPLICA IDENTITY FULL")
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute("INSERT INTO articles (id, title, body) VALUES (1, 'a', 'b')")
        deployment.execute("UPDATE articles SET title = 'c' WHERE id = 1")
        deployment.execute("INSERT INTO articles (id, title) VALUES (2, 'gone')")
        deployment.execute("DELETE FROM articles WHERE id = 2")
        deployment.wait_caught_up()
        assert [r["source_id"] for r in deployment.sink_rows()] == ["1"]
        assert assert_in_step(deployment) == 1
    finally:
        assert process.stop() == 0, process.output
