"""What a batch writes, once its chunks were embedded: pure, no provider, no sink.

`settle` turns the plan (`cdc.apply.plan`) and the embedding result into the `SinkWrite` the
writer applies in one transaction. The rejection rule lives here (invariant 7): a row with a
chunk the service rejects for good keeps no vectors (stale ones would answer for content the
row no longer has), loses its metadata updates and trims, and waits in the dead letters.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc.apply.plan import WritePlan
from cdc.embedding.providers import EmbeddingResult, Vector
from cdc.replication.positions import Position
from cdc.sink.progress import ResyncPosition
from cdc.sink.writer import DeadLetter, SinkWrite


def settle(
    plan: WritePlan,
    result: EmbeddingResult | None,
    *,
    truncated: Sequence[str] = (),
    positions: Sequence[ResyncPosition] = (),
    checkpoint: Position | None = None,
) -> SinkWrite:
    """The sink write for `plan` given `result`, the embedding of `plan.to_embed` (one slot
    per chunk, in order; None when nothing was embedded). `plan` is left as it was."""
    works = plan.to_embed
    errors = result.errors if result is not None else {}
    vectors: Sequence[Vector | None] = result.vectors if result is not None else ()
    rejected = {works[index].row.key: error for index, error in errors.items()}
    upserts = [
        (work, vector)
        for work, vector in zip(works, vectors, strict=False)
        if work.row.key not in rejected and vector is not None
    ]
    remove = list(plan.remove)
    removed = {row.key for row in remove}
    dead_letters = []
    for work in works:
        error = rejected.get(work.row.key)
        if error is None:
            continue
        dead_letters.append(DeadLetter(work, error))
        if work.row.key not in removed:
            remove.append(work.row)
            removed.add(work.row.key)
    return SinkWrite(
        truncated=list(truncated),
        remove=remove,
        trim=[trim for trim in plan.trim if trim[0].key not in rejected],
        upserts=upserts,
        metadata_only=[work for work in plan.metadata_only if work.row.key not in rejected],
        dead_letters=dead_letters,
        landed=list(dict.fromkeys(work.row.key for work, _ in upserts)),
        positions=list(positions),
        checkpoint=checkpoint,
    )
