"""`cdc dead-letters list|retry` and the `cdc_dead_letter_rows` gauge."""

from __future__ import annotations

import json

from tests.backends import every_backend
from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import Deployment, assert_in_step, free_port, scrape, wait_until


@every_backend
def test_retry_re_embeds_dead_letters_once_the_endpoint_accepts_them(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    port = free_port()
    deployment.extra = {"metrics": {"port": port, "poll_interval": 0.2}}
    endpoint.reject_inputs_containing("POISON")
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute(
            "INSERT INTO articles (id, title, body) VALUES "
            "(1, 'fine', 'a'), (2, 'POISON', 'b'), (3, 'also POISON', 'c'), (4, 'fine', 'd')"
        )
        deployment.wait_caught_up()
        assert assert_in_step(deployment) == 2
        wait_until(
            lambda: scrape(port, "cdc_dead_letter_rows", 'table="public.articles"') == 2,
            what="cdc_dead_letter_rows gauge at 2",
        )

        listed = deployment.cli("dead-letters", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        entries = json.loads(listed.stdout)
        assert [(e["source_id"], e["attempts"]) for e in entries] == [("2", 1), ("3", 1)]
        assert all(e["error"] for e in entries)
        text = deployment.cli("dead-letters", "list", "--table", "articles")
        assert "id 2  chunk 0  attempts 1" in text.stdout and "2 rows dead-lettered" in text.stdout

        # Still rejected: they stay, one attempt more, and the command says so (exit 1).
        again = deployment.cli("dead-letters", "retry")
        assert again.returncode == 1, again.stdout + again.stderr
        assert "2 rows retried, 0 resolved, 2 rejected again" in again.stdout
        assert [d["attempts"] for d in deployment.dead_letters()] == [2, 2]

        # The endpoint recovers; one row was edited meanwhile: retry takes its current content,
        # while `cdc run` keeps streaming.
        endpoint.reset()
        endpoint.reject_inputs_containing("NEVER")
        deployment.execute("DELETE FROM articles WHERE id = 3")
        deployment.wait_caught_up()
        retried = deployment.cli("dead-letters", "retry", "--json")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        # Row 3 was deleted: the stream already resolved its dead letter.
        assert json.loads(retried.stdout) == {
            "public.articles": {"retried": 1, "resolved": 1, "failed": 0}
        }
        assert deployment.dead_letters() == []
        assert assert_in_step(deployment) == 3
        wait_until(
            lambda: scrape(port, "cdc_dead_letter_rows", 'table="public.articles"') == 0,
            what="cdc_dead_letter_rows gauge back at 0",
        )
        assert scrape(port, "cdc_dead_letters_total", 'table="public.articles"') == 2
        deployment.execute("UPDATE articles SET body = 'still streaming' WHERE id = 2")
        deployment.wait_caught_up()
        assert assert_in_step(deployment) == 3
    finally:
        assert process.stop() == 0, process.output


@every_backend
def test_retry_removes_dead_letters_of_rows_gone_from_the_source(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    endpoint.reject_inputs_containing("POISON")
    process = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'POISON'), (2, 'ok')")
        deployment.wait_caught_up()
    finally:
        assert process.stop() == 0, process.output
    # Deleted while nothing streams: retry finds the row gone and drops its dead letter.
    deployment.execute("DELETE FROM articles WHERE id = 1")
    retried = deployment.cli("dead-letters", "retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "1 rows retried, 1 resolved, 0 rejected again" in retried.stdout
    assert deployment.dead_letters() == []


def test_unknown_table_is_bad_usage(deployment: Deployment) -> None:
    assert deployment.cli("setup").returncode == 0
    result = deployment.cli("dead-letters", "list", "--table", "public.nope")
    assert result.returncode == 2 and "--table public.nope" in result.stderr
    empty = deployment.cli("dead-letters", "list")
    assert empty.returncode == 0 and "no dead letters" in empty.stdout
