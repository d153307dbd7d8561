"""The content rule of interface.md: columns joined by a blank line, hashing, keys, chunks."""

from __future__ import annotations

import hashlib

import pytest

from cdc.content import ChunkRule, ContentRule, content_hash, make_chunks, render_content
from cdc.embedding.tokens import Tokenizer
from cdc.ids import render_source_id

RULE = ChunkRule(Tokenizer.for_model("text-embedding-3-small"), size=100)


def test_columns_join_with_a_blank_line_skipping_null_and_empty() -> None:
    assert render_content(["Title", None, "", "Body"]) == "Title\n\nBody"
    assert render_content([None, ""]) == ""


def test_hash_is_sha256_hex_of_utf8() -> None:
    text = "سلام 你好 🎉"
    assert content_hash(text) == hashlib.sha256(text.encode()).hexdigest()


def test_source_id_single_and_composite() -> None:
    assert render_source_id(["42"]) == "42"
    assert render_source_id(["en", "42"]) == '["en", "42"]'
    assert render_source_id(["fa", "سلام"]) == '["fa", "سلام"]'


def test_short_content_is_one_chunk_numbered_zero() -> None:
    [chunk] = make_chunks("short", RULE)
    assert (chunk.number, chunk.text, chunk.hash) == (0, "short", content_hash("short"))
    assert make_chunks("", RULE) == []


def test_long_content_becomes_token_windows_each_hashed_by_its_own_text() -> None:
    text = "\n\n".join(f"paragraph {i} " + "word " * 30 for i in range(20))
    chunks = make_chunks(text, RULE)
    assert len(chunks) > 1
    assert [c.number for c in chunks] == list(range(len(chunks)))
    assert "".join(c.text for c in chunks) == text
    for chunk in chunks:
        assert chunk.hash == hashlib.sha256(chunk.text.encode()).hexdigest()
        assert chunk.tokens == RULE.tokenizer.count([chunk.text])[0] <= 100


def test_template_renders_columns_with_null_as_empty() -> None:
    rule = ContentRule.from_template("Title: {title}\n\n{body} by {{author}} ({title})")
    assert rule.columns == ("title", "body")
    assert rule.render(["Tea", "Brew it."]) == "Title: Tea\n\nBrew it. by {author} (Tea)"
    assert rule.render([None, "Brew it."]) == "Title: \n\nBrew it. by {author} ()"


def test_template_whose_columns_are_all_null_or_empty_has_no_content() -> None:
    rule = ContentRule.from_template("Title: {title}\n\n{body}")
    assert rule.render([None, ""]) == ""
    assert make_chunks(rule.render([None, None]), RULE) == []


def test_columns_rule_is_the_blank_line_join() -> None:
    rule = ContentRule.joined(["title", "body"])
    assert rule.render(["A", None]) == render_content(["A", None]) == "A"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{a.b}", r"\{a\.b\} must name a column"),
        ("{}", "must name a column"),
        ("{title!r}", "no conversion or format spec"),
        ("{title:>9}", "no conversion or format spec"),
        ("no placeholder", "names no column"),
        ("{title", "not a valid format string"),
    ],
)
def test_bad_templates_say_what_is_wrong(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContentRule.from_template(template)
