"""Which recorded column types count as changed (a per-table resync follows)."""

from __future__ import annotations

from cdc.config import TableConfig
from cdc.sink.migrations import changed_types, watched_columns
from cdc.source.reads import SourceTable


def test_nothing_is_compared_before_a_first_recording() -> None:
    assert changed_types(None, {"body": "text"}) == []


def test_a_changed_type_is_reported_with_both_types() -> None:
    recorded = {"id": "bigint", "body": "text", "author_id": "integer"}
    current = {"id": "bigint", "body": "character varying(5000)", "author_id": "integer"}
    assert changed_types(recorded, current) == [("body", "text", "character varying(5000)")]


def test_columns_added_to_or_gone_from_the_configuration_are_not_type_changes() -> None:
    # `body` renamed to `text` (the configuration followed), `views` newly configured.
    recorded = {"id": "bigint", "body": "text"}
    current = {"id": "bigint", "text": "text", "views": "integer"}
    assert changed_types(recorded, current) == []


def test_the_key_content_and_metadata_columns_are_watched_each_once() -> None:
    config = TableConfig(table="public.faqs", columns=["q", "a"], metadata=["lang", "id"])
    table = SourceTable(config, key_names=("id",), key_types=("integer",), replica_identity="d")
    assert watched_columns(table) == ["id", "q", "a", "lang"]
