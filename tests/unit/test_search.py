"""The pure parts of `cdc search` / `cdc similar`: --where, scope, chunk dedupe, ids, output."""

from __future__ import annotations

from typing import Any

import pytest

from cdc.commands.search import hits_json, parse_where, plan_scope, render_hits, snippet
from cdc.config import Settings
from cdc.errors import ConfigError
from cdc.ids import source_id_forms
from cdc.sink.nearest import (
    Hit,
    best_per_row,
    ef_search_for,
    nearest_query,
    vector_text,
    version_tuple,
)


def settings(*tables: dict[str, Any]) -> Settings:
    return Settings.model_validate({"source": {"dsn": "postgresql://db/app"}, "tables": tables})


ARTICLES = {"table": "public.articles", "columns": ["body"], "metadata": ["author_id", "lang"]}
FAQS = {"table": "public.faqs", "columns": ["q"], "metadata": ["lang"], "target": "faq_vectors"}
POSTS = {"table": "public.posts", "columns": ["body"]}


def hit(table: str, source_id: str, chunk: int, distance: float) -> Hit:
    return Hit(table, source_id, chunk, distance, f"text of {source_id}", {})


def test_where_items_become_a_mapping() -> None:
    assert parse_where(None) == {}
    assert parse_where(["author_id=7", "lang=en"]) == {"author_id": "7", "lang": "en"}
    # The value is everything after the first `=`, and may be empty.
    assert parse_where(["expr=a=b", "empty="]) == {"expr": "a=b", "empty": ""}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["author_id"], "--where 'author_id': write it as COLUMN=VALUE"),
        (["=7"], "--where '=7': write it as COLUMN=VALUE"),
        (["lang=en", "lang=fr"], "--where lang is given twice"),
    ],
)
def test_bad_where_items_are_bad_usage(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_where(items)


def test_scope_groups_source_tables_by_sink_table() -> None:
    config = settings(ARTICLES, FAQS, POSTS)
    assert plan_scope(config, config.tables, {}, 10) == {
        ("public", "cdc_embeddings"): ["public.articles", "public.posts"],
        ("public", "faq_vectors"): ["public.faqs"],
    }
    # Tables without a --where column cannot match: they are left out.
    assert plan_scope(config, config.tables, {"lang": "en"}, 10) == {
        ("public", "cdc_embeddings"): ["public.articles"],
        ("public", "faq_vectors"): ["public.faqs"],
    }


def test_scope_names_an_unknown_where_column() -> None:
    config = settings(ARTICLES, FAQS)
    with pytest.raises(ConfigError, match=r"--where color: not a metadata column of public\.faqs"):
        plan_scope(config, config.tables[1:], {"color": "red"}, 10)
    # Each column is some table's, but no table has both: nothing could match.
    notes = {"table": "public.notes", "columns": ["x"], "metadata": ["author_id"]}
    config = settings(FAQS, notes)
    with pytest.raises(ConfigError, match="no configured table has all of these"):
        plan_scope(config, config.tables, {"lang": "en", "author_id": "1"}, 10)


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_k_out_of_range_is_bad_usage(k: int) -> None:
    config = settings(ARTICLES)
    with pytest.raises(ConfigError, match=f"-k {k}"):
        plan_scope(config, config.tables, {}, k)


def test_a_row_counts_once_at_its_best_chunk() -> None:
    hits = [
        hit("public.a", "1", 0, 0.5),
        hit("public.a", "2", 0, 0.3),
        hit("public.a", "1", 3, 0.1),
        hit("public.b", "1", 0, 0.2),  # same id, another table: another row
        hit("public.a", "1", 1, 0.4),
    ]
    assert [(h.source_table, h.source_id, h.chunk) for h in best_per_row(hits)] == [
        ("public.a", "1", 3),
        ("public.b", "1", 0),
        ("public.a", "2", 0),
    ]
    # Ties are ordered by table and id, so output is stable.
    tied = best_per_row([hit("public.b", "9", 0, 0.2), hit("public.a", "9", 0, 0.2)])
    assert [h.source_table for h in tied] == ["public.a", "public.b"]


def test_composite_ids_are_also_looked_up_in_the_sinks_spelling() -> None:
    assert source_id_forms("42") == ["42"]
    assert source_id_forms('["en", "42"]') == ['["en", "42"]']
    assert source_id_forms('["en",42]') == ['["en",42]', '["en", "42"]']
    assert source_id_forms("[1]") == ["[1]"]  # one value is no composite key
    assert source_id_forms("[true, 1]") == ["[true, 1]"]


def test_vector_text_is_exact_for_float32() -> None:
    assert vector_text([0.5, -1.0, 0.1]) == "[0.5,-1.0,0.1]"


def test_ef_search_stays_within_pgvector_bounds() -> None:
    assert [ef_search_for(n) for n in (4, 40, 400, 4000)] == [40, 40, 400, 1000]


def test_versions_compare_as_numbers() -> None:
    assert version_tuple("0.8.0") >= (0, 8, 0) > version_tuple("0.7.4")
    assert version_tuple("0.10.0") > (0, 8, 0)
    assert version_tuple("0.8.0-dev") == (0, 8, 0)


def test_nearest_query_orders_by_the_distance_operator() -> None:
    query = nearest_query(("app", "My Vectors"), "halfvec", 2, exclude=True)
    text = repr(query)
    assert "<=>" in text and "halfvec" in text and "My Vectors" in text
    assert "key1" in text and "self_id" in text


def test_render_hits_is_a_table_with_one_line_per_row() -> None:
    hits = [
        Hit("public.articles", "7", 0, 0.12345, "Replication\n\nslots keep WAL", {"lang": "en"}),
        Hit("public.faqs", '["en", "1"]', 0, 0.5, "x" * 100, {"author_id": None}),
    ]
    lines = render_hits(hits).splitlines()
    assert lines[0].split() == ["#", "distance", "table", "id", "content", "metadata"]
    assert lines[1].split()[:4] == ["1", "0.1235", "public.articles", "7"]
    assert "Replication slots keep WAL" in lines[1] and lines[1].endswith("lang=en")
    assert lines[2].endswith("author_id=null") and "x" * 59 + "…" in lines[2]
    assert render_hits([]) == "no matching rows"
    # A chunk column appears only when some hit is a chunk other than 0.
    chunked = render_hits([Hit("public.a", "1", 2, 0.1, "text", {})]).splitlines()[0]
    assert chunked.split() == ["#", "distance", "table", "id", "chunk", "content", "metadata"]


def test_snippet_is_one_line() -> None:
    assert snippet("a\n b\t\tc") == "a b c"
    assert snippet("abcdef", width=4) == "abc…"


def test_json_shape() -> None:
    (entry,) = hits_json([Hit("public.a", "1", 0, 0.25, "text", {"lang": "en"})])
    assert entry == {
        "rank": 1,
        "source_table": "public.a",
        "source_id": "1",
        "chunk": 0,
        "distance": 0.25,
        "similarity": 0.75,
        "content": "text",
        "metadata": {"lang": "en"},
    }
