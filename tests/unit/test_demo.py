"""`cdc demo`'s pure parts: its configuration, its corpus, its progress display."""

from __future__ import annotations

import io

from cdc.commands.demo import TABLE, Progress, corpus, demo_settings


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_configuration_is_valid_and_local() -> None:
    settings = demo_settings("postgresql://postgres@/postgres?host=/tmp/x")
    assert settings.embedding.provider == "local"
    assert settings.embedding.dimensions == 384
    assert [t.table for t in settings.tables] == [TABLE]


def test_the_corpus_is_pythons_help_topics_with_titles() -> None:
    rows = corpus()
    topics = {topic for topic, _, _ in rows}
    assert len(rows) >= 70 and {"yield", "pass", "while", "import"} <= topics
    by_topic = {topic: (title, body) for topic, title, body in rows}
    title, body = by_topic["yield"]
    assert title == 'The "yield" statement'
    assert body.startswith("yield_stmt")  # the title's **** underline is dropped


def test_progress_off_a_terminal_is_a_few_plain_lines() -> None:
    out = io.StringIO()
    bar = Progress(out, 80, "embedding")
    for done in range(0, 81, 4):
        bar.update(done)
    bar.finish()
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["0/80", "20/80", "40/80", "60/80", "80/80"]
    assert "\r" not in out.getvalue()


def test_progress_on_a_terminal_redraws_one_line() -> None:
    out = Terminal()
    bar = Progress(out, 10, "embedding")
    for done in (0, 3, 3, 10):
        bar.update(done)
    bar.finish()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("10/10 rows  0s\n")
