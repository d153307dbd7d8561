"""`cdc verify`'s comparison: each row's expected chunks against what the sink holds."""

from __future__ import annotations

import json

from cdc.commands.verify import (
    EXAMPLES,
    HeldChunk,
    TableReport,
    Verdict,
    VerifyReport,
    classify,
    classify_batch,
    group_held,
    orphans,
    render_report,
)
from cdc.config import TableConfig
from cdc.content import ChunkRule, content_hash, make_chunks
from cdc.embedding.tokens import Tokenizer
from cdc.ids import key_values, render_source_id
from cdc.rows import RowState
from cdc.source.reads import SourceTable, row_state

MODEL = "m"
RULE = ChunkRule(Tokenizer.for_model(MODEL), size=25)


def state(source_id: str, content: str) -> RowState:
    return RowState("public.a", source_id, content, {}, lsn=None)


def held_for(content: str, model: str = MODEL) -> dict[int, HeldChunk]:
    return {c.number: HeldChunk(c.hash, model) for c in make_chunks(content, RULE)}


def verdict(row: RowState, held: dict[int, HeldChunk], dead: bool = False) -> Verdict:
    return classify(row, held, dead_lettered=dead, model=MODEL, rule=RULE)


LONG = "word " * 60  # three chunks of at most 25 tokens


def test_rows_whose_chunks_match_are_ok() -> None:
    assert verdict(state("1", "text"), held_for("text")) is Verdict.OK
    assert len(held_for(LONG)) == 3
    assert verdict(state("1", LONG), held_for(LONG)) is Verdict.OK


def test_a_row_with_content_and_no_vectors_is_missing() -> None:
    assert verdict(state("1", "text"), {}) is Verdict.MISSING


def test_a_dead_lettered_row_without_vectors_is_not_missing() -> None:
    assert verdict(state("1", "text"), {}, dead=True) is Verdict.DEAD_LETTER


def test_a_row_without_content_needs_no_vectors() -> None:
    assert verdict(state("1", ""), {}) is Verdict.OK
    assert verdict(state("1", ""), held_for("old text")) is Verdict.WRONG_CHUNKS


def test_a_different_hash_is_stale() -> None:
    assert verdict(state("1", "new text"), held_for("old text")) is Verdict.STALE
    held = held_for(LONG)
    held[1] = HeldChunk(content_hash("tampered"), MODEL)
    assert verdict(state("1", LONG), held) is Verdict.STALE


def test_a_different_model_is_wrong_model() -> None:
    assert verdict(state("1", "text"), held_for("text", "old-model")) is Verdict.WRONG_MODEL


def test_stale_content_wins_over_a_wrong_model() -> None:
    assert verdict(state("1", "new"), held_for("old", "old-model")) is Verdict.STALE


def test_missing_or_surplus_chunks_are_a_wrong_chunk_count() -> None:
    held = held_for(LONG)
    del held[2]
    assert verdict(state("1", LONG), held) is Verdict.WRONG_CHUNKS
    surplus = {**held_for("short"), 1: HeldChunk(content_hash("x"), MODEL)}
    assert verdict(state("1", "short"), surplus) is Verdict.WRONG_CHUNKS


def test_classify_batch_looks_rows_up_by_source_id() -> None:
    rows = [state("1", "a"), state("2", "b"), state("3", "c"), state("4", "d")]
    held = group_held(
        [
            ("1", 0, content_hash("a"), MODEL),
            ("2", 0, content_hash("old"), MODEL),
            ("4", 0, content_hash("d"), "old-model"),
        ]
    )
    verdicts = classify_batch(rows, held, {"3"}, MODEL, RULE)
    assert [(r.source_id, v) for r, v in verdicts] == [
        ("1", Verdict.OK),
        ("2", Verdict.STALE),
        ("3", Verdict.DEAD_LETTER),
        ("4", Verdict.WRONG_MODEL),
    ]


def test_orphans_are_sink_ids_the_source_lacks() -> None:
    assert orphans(["1", "2", "3"], {"1", "3"}) == ["2"]
    assert orphans([], set()) == []


def test_key_values_inverts_render_source_id() -> None:
    assert key_values("42", 1) == ("42",)
    assert key_values('["x", "1"]', 1) == ('["x", "1"]',)
    composite = ("en", "42")
    assert key_values(render_source_id(composite), 2) == composite
    unicode = ("fa", "سلام")
    assert key_values(render_source_id(unicode), 2) == unicode


def test_key_values_refuses_ids_no_row_could_have() -> None:
    assert key_values("42", 2) is None
    assert key_values("not json", 2) is None
    assert key_values(json.dumps(["a", "b", "c"]), 2) is None
    assert key_values(json.dumps({"a": "b"}), 2) is None
    assert key_values(json.dumps(["a", 1]), 2) is None


def test_row_state_applies_the_content_rule() -> None:
    table = SourceTable(
        config=TableConfig(table="public.a", columns=["title", "body"], metadata=["author"]),
        key_names=("lang", "id"),
        key_types=("text", "bigint"),
        replica_identity="d",
    )
    row = row_state(table, ("en", "42", "Title", None, "7"))
    assert row.key == ("public.a", '["en", "42"]')
    assert row.content == "Title"
    assert row.metadata == {"author": "7"}
    assert row.lsn is None and not row.deleted


def test_the_report_counts_every_kind_and_keeps_a_few_examples() -> None:
    report = TableReport("public.a", checked=10)
    for number in range(EXAMPLES + 3):
        report.record(Verdict.MISSING, str(number))
    report.record(Verdict.ORPHAN, "99")
    report.record(Verdict.DEAD_LETTER, "7")
    report.record(Verdict.OK, "8")
    data = report.as_dict()
    assert data["checked"] == 10
    assert data["missing"] == EXAMPLES + 3 and data["orphans"] == 1 and data["ok"] == 1
    assert data["stale"] == data["wrong_model"] == data["wrong_chunks"] == 0
    assert data["examples"] == {
        "missing": [str(n) for n in range(EXAMPLES)],
        "orphans": ["99"],
        "dead_letters": ["7"],
    }
    # Dead letters are reported, not counted as drift.
    assert report.drift == EXAMPLES + 4
    whole = VerifyReport([report, TableReport("public.b")])
    assert whole.as_dict()["drift"] is True
    assert VerifyReport([TableReport("public.b")]).as_dict()["drift"] is False


def test_the_text_report_names_each_kind_with_examples() -> None:
    report = TableReport("public.a", checked=3)
    report.record(Verdict.OK, "1")
    report.record(Verdict.STALE, "2")
    text = "\n".join(render_report(VerifyReport([report])))
    assert text.startswith("public.a: 3 rows checked, 1 ok (DRIFT)")
    assert "stale" in text and "e.g. 2" in text
    for kind in ("missing", "wrong_model", "wrong_chunks", "orphans", "dead_letters"):
        assert kind in text
