"""The memory of what the sink holds: fingerprints, bounded, forgotten on removal."""

from __future__ import annotations

from cdc.apply.known import KnownRows, fingerprint
from cdc.rows import RowState


def row(content: str, metadata: dict[str, str] | None = None, source_id: str = "1") -> RowState:
    return RowState("public.a", source_id, content, metadata or {}, lsn=None)


def test_fingerprint_covers_content_metadata_and_model() -> None:
    base = fingerprint(row("text", {"a": "1"}), "m1")
    assert fingerprint(row("text", {"a": "1"}), "m1") == base
    assert fingerprint(row("text!", {"a": "1"}), "m1") != base
    assert fingerprint(row("text", {"a": "2"}), "m1") != base
    assert fingerprint(row("text", {"a": "1"}), "m2") != base
    # A boundary between fields cannot be faked by moving text across it.
    assert fingerprint(row("ab", {}), "m") != fingerprint(row("a", {}), "mb")
    assert fingerprint(row("a", {"x": "b"}), "m") != fingerprint(row("ab", {"x": ""}), "m")
    assert fingerprint(row("a", {"x": None}), "m") != fingerprint(row("a", {"x": ""}), "m")


def test_unchanged_only_for_the_same_fingerprint() -> None:
    known = KnownRows(capacity=10)
    key = ("public.a", "1")
    assert not known.unchanged(key, b"x")
    known.remember(key, b"x")
    assert known.unchanged(key, b"x") and not known.unchanged(key, b"y")


def test_least_recently_used_entries_go_first() -> None:
    known = KnownRows(capacity=2)
    known.remember(("t", "1"), b"1")
    known.remember(("t", "2"), b"2")
    assert known.unchanged(("t", "1"), b"1")  # now the most recent
    known.remember(("t", "3"), b"3")
    assert len(known) == 2
    assert known.unchanged(("t", "1"), b"1") and not known.unchanged(("t", "2"), b"2")


def test_forget_keys_and_whole_tables() -> None:
    known = KnownRows(capacity=10)
    for table, source_id in [("a", "1"), ("a", "2"), ("b", "1")]:
        known.remember((table, source_id), b"x")
    known.forget([("a", "1")])
    known.forget_tables(["b"])
    assert not known.unchanged(("a", "1"), b"x") and not known.unchanged(("b", "1"), b"x")
    assert known.unchanged(("a", "2"), b"x")


def test_capacity_zero_remembers_nothing() -> None:
    known = KnownRows(capacity=0)
    known.remember(("t", "1"), b"1")
    assert len(known) == 0
