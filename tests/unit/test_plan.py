"""What a batch costs: unchanged content is never embedded; removals, trims, metadata."""

from __future__ import annotations

from cdc.content import content_hash
from cdc.plan import RowState, StoredChunk, plan_writes

MODEL = "m"


def state(source_id: str, content: str, metadata=None, deleted: bool = False) -> RowState:
    return RowState("public.a", source_id, content, metadata or {}, lsn=1, deleted=deleted)


def stored(content: str, same_metadata: bool = True, model: str = MODEL) -> StoredChunk:
    return StoredChunk(content_hash(content), model, same_metadata)


def test_new_and_changed_rows_are_embedded_unchanged_ones_are_not() -> None:
    existing = {("public.a", "1"): {0: stored("same")}, ("public.a", "2"): {0: stored("old")}}
    plan = plan_writes(
        [state("1", "same"), state("2", "new"), state("3", "fresh")], existing, MODEL, 1000
    )
    assert sorted(w.row.source_id for w in plan.to_embed) == ["2", "3"]
    assert plan.unchanged == {"public.a": 1}


def test_a_different_model_means_embedding_again() -> None:
    existing = {("public.a", "1"): {0: stored("same", model="old-model")}}
    plan = plan_writes([state("1", "same")], existing, MODEL, 1000)
    assert [w.row.source_id for w in plan.to_embed] == ["1"]


def test_metadata_change_alone_updates_without_embedding() -> None:
    existing = {("public.a", "1"): {0: stored("same", same_metadata=False)}}
    plan = plan_writes([state("1", "same", {"author": "2"})], existing, MODEL, 1000)
    assert plan.to_embed == [] and [w.row.source_id for w in plan.metadata_only] == ["1"]


def test_deleted_and_emptied_rows_are_removed() -> None:
    existing = {("public.a", "2"): {0: stored("x")}}
    plan = plan_writes(
        [state("1", "", deleted=True), state("2", ""), state("3", "")], existing, MODEL, 1000
    )
    assert [r.source_id for r in plan.remove] == ["1", "2"]
    assert plan.empty == {"public.a": 2}


def test_shrinking_content_trims_surplus_chunks_and_embeds_only_changed_chunks() -> None:
    first, second = "a" * 90 + " ", "b" * 50
    existing = {("public.a", "1"): {0: stored(first), 1: stored("c" * 90 + " "), 2: stored("tail")}}
    plan = plan_writes([state("1", first + second)], existing, MODEL, 100)
    assert [w.chunk.number for w in plan.to_embed] == [1]
    assert [(r.source_id, keep) for r, keep in plan.trim] == [("1", 2)]
