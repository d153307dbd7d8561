"""`settle`: what a batch writes once its chunks were embedded, rejections included."""

from __future__ import annotations

import numpy as np

from cdc.apply.plan import WritePlan
from cdc.apply.settle import settle
from cdc.content import Chunk, content_hash
from cdc.embedding.providers import EmbeddingResult
from cdc.replication.lsn import Lsn
from cdc.replication.positions import Position
from cdc.rows import ChunkWork, RowState


def row(source_id: str, content: str = "text") -> RowState:
    return RowState("public.a", source_id, content, {}, lsn=Lsn(1))


def work(state: RowState, number: int = 0) -> ChunkWork:
    text = f"{state.content} {number}"
    return ChunkWork(state, Chunk(number, text, content_hash(text)))


def vector(value: float) -> np.ndarray:
    return np.full(3, value, dtype=np.float32)


def result(count: int, errors: dict[int, str] | None = None) -> EmbeddingResult:
    errors = errors or {}
    vectors = [None if i in errors else vector(i) for i in range(count)]
    return EmbeddingResult(vectors=vectors, errors=errors, tokens=count, requests=1)


def test_embedded_chunks_become_upserts_and_their_rows_land() -> None:
    one, two = row("1"), row("2")
    plan = WritePlan(to_embed=[work(one, 0), work(one, 1), work(two)])
    write = settle(plan, result(3))
    assert [(w.row.source_id, w.chunk.number) for w, _ in write.upserts] == [
        ("1", 0),
        ("1", 1),
        ("2", 0),
    ]
    assert write.landed == [one.key, two.key]
    assert write.dead_letters == []
    assert write.remove == []


def test_a_rejected_chunk_sends_its_row_to_dead_letters_and_removes_its_vectors() -> None:
    bad, good = row("bad"), row("good")
    plan = WritePlan(
        to_embed=[work(bad, 0), work(bad, 1), work(good)],
        metadata_only=[work(bad, 2), work(good, 1)],
        trim=[(bad, 3), (good, 2)],
    )
    write = settle(plan, result(3, errors={1: "too long"}))
    # No chunk of the rejected row is written, not even the one that got a vector.
    assert [w.row.source_id for w, _ in write.upserts] == ["good"]
    # Every chunk of that row waits with the row's error, to be retried together.
    assert [(d.work.chunk.number, d.error) for d in write.dead_letters] == [
        (0, "too long"),
        (1, "too long"),
    ]
    assert write.remove == [bad]
    assert [w.row.source_id for w in write.metadata_only] == ["good"]
    assert write.trim == [(good, 2)]
    assert write.landed == [good.key]


def test_a_row_already_removed_is_removed_once() -> None:
    gone = row("gone")
    plan = WritePlan(to_embed=[work(gone)], remove=[gone])
    write = settle(plan, result(1, errors={0: "rejected"}))
    assert write.remove == [gone]
    assert len(write.dead_letters) == 1


def test_nothing_embedded_passes_the_plan_through_with_the_checkpoint() -> None:
    deleted = RowState("public.a", "9", "", {}, lsn=Lsn(2), deleted=True)
    meta = work(row("m"))
    checkpoint = Position(Lsn(100))
    plan = WritePlan(metadata_only=[meta], remove=[deleted], trim=[(row("t"), 1)])
    write = settle(plan, None, truncated=["public.b"], checkpoint=checkpoint)
    assert write.upserts == [] and write.dead_letters == [] and write.landed == []
    assert write.metadata_only == [meta]
    assert write.remove == [deleted]
    assert write.truncated == ["public.b"]
    assert write.checkpoint == checkpoint


def test_a_missing_vector_without_an_error_is_not_written() -> None:
    one = row("1")
    plan = WritePlan(to_embed=[work(one)])
    empty = EmbeddingResult(vectors=[None], errors={}, tokens=0, requests=1)
    write = settle(plan, empty)
    assert write.upserts == [] and write.dead_letters == [] and write.landed == []


def test_the_plan_is_left_as_it_was() -> None:
    bad = row("bad")
    plan = WritePlan(to_embed=[work(bad)], metadata_only=[work(bad, 1)])
    settle(plan, result(1, errors={0: "no"}))
    assert plan.remove == [] and len(plan.metadata_only) == 1
