"""What a batch costs: unchanged content is never embedded; removals, trims, metadata."""

from __future__ import annotations

from cdc.apply.plan import plan_writes
from cdc.content import ChunkRule, content_hash, make_chunks
from cdc.embedding.tokens import Tokenizer
from cdc.rows import RowState, StoredChunk

MODEL = "m"
TOKENIZER = Tokenizer.for_model("text-embedding-3-small")
RULES = {"public.a": ChunkRule(TOKENIZER, size=1000)}


def state(source_id: str, content: str, metadata=None, deleted: bool = False) -> RowState:
    return RowState("public.a", source_id, content, metadata or {}, lsn=1, deleted=deleted)


def stored(content: str, same_metadata: bool = True, model: str = MODEL) -> StoredChunk:
    return StoredChunk(content_hash(content), model, same_metadata)


def test_new_and_changed_rows_are_embedded_unchanged_ones_are_not() -> None:
    existing = {("public.a", "1"): {0: stored("same")}, ("public.a", "2"): {0: stored("old")}}
    plan = plan_writes(
        [state("1", "same"), state("2", "new"), state("3", "fresh")], existing, MODEL, RULES
    )
    assert sorted(w.row.source_id for w in plan.to_embed) == ["2", "3"]
    assert plan.unchanged == {"public.a": 1}


def test_a_different_model_means_embedding_again() -> None:
    existing = {("public.a", "1"): {0: stored("same", model="old-model")}}
    plan = plan_writes([state("1", "same")], existing, MODEL, RULES)
    assert [w.row.source_id for w in plan.to_embed] == ["1"]


def test_metadata_change_alone_updates_without_embedding() -> None:
    existing = {("public.a", "1"): {0: stored("same", same_metadata=False)}}
    plan = plan_writes([state("1", "same", {"author": "2"})], existing, MODEL, RULES)
    assert plan.to_embed == [] and [w.row.source_id for w in plan.metadata_only] == ["1"]


def test_deleted_and_emptied_rows_are_removed() -> None:
    existing = {("public.a", "2"): {0: stored("x")}}
    plan = plan_writes(
        [state("1", "", deleted=True), state("2", ""), state("3", "")], existing, MODEL, RULES
    )
    assert [r.source_id for r in plan.remove] == ["1", "2"]
    assert plan.empty == {"public.a": 2}


def chunks_of(content: str, rule: ChunkRule) -> dict[int, StoredChunk]:
    return {c.number: StoredChunk(c.hash, MODEL, True) for c in make_chunks(content, rule)}


def test_editing_the_tail_of_a_long_row_re_embeds_only_the_chunks_that_changed() -> None:
    rules = {"public.a": ChunkRule(TOKENIZER, size=50)}
    before = " ".join(f"sentence {i} of a long article." for i in range(60))
    after = before[: before.rindex("sentence")] + "a new ending."
    existing = {("public.a", "1"): chunks_of(before, rules["public.a"])}
    assert len(existing[("public.a", "1")]) > 3

    plan = plan_writes([state("1", after)], existing, MODEL, rules)

    last = len(make_chunks(after, rules["public.a"])) - 1
    assert [w.chunk.number for w in plan.to_embed] == [last]
    assert plan.trim == [] and plan.unchanged == {}


def test_shrinking_content_trims_surplus_chunks_and_embeds_only_changed_chunks() -> None:
    rules = {"public.a": ChunkRule(TOKENIZER, size=50)}
    long = " ".join(f"sentence {i} of a long article." for i in range(60))
    existing = {("public.a", "1"): chunks_of(long, rules["public.a"])}
    kept = make_chunks(long, rules["public.a"])[0].text
    shorter = kept + " and then it stopped."

    plan = plan_writes([state("1", shorter)], existing, MODEL, rules)

    assert [w.chunk.number for w in plan.to_embed] == [1]
    assert [(r.source_id, keep) for r, keep in plan.trim] == [("1", 2)]
