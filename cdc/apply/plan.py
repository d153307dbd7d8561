"""Deciding what a batch costs: which chunks need embedding, which only need metadata, which go.

Pure. The content hash (with the model) decides whether a chunk is embedded at all: an update
that leaves a row's content alone costs no API call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cdc.content import Chunk, ChunkRule, make_chunks
from cdc.rows import ChunkWork, RowState, SourceKey, StoredChunk


@dataclass(slots=True)
class WritePlan:
    to_embed: list[ChunkWork] = field(default_factory=list)
    metadata_only: list[ChunkWork] = field(default_factory=list)
    # Chunks the sink holds as they are (content, model and metadata): nothing to write.
    kept: list[ChunkWork] = field(default_factory=list)
    # Rows whose vectors all go (deleted, or content now empty).
    remove: list[RowState] = field(default_factory=list)
    # Rows that keep their first `n` chunks and lose the rest (content shrank).
    trim: list[tuple[RowState, int]] = field(default_factory=list)
    # Rows not embedded, per source table: content unchanged, or content empty.
    unchanged: Counter[str] = field(default_factory=Counter)
    empty: Counter[str] = field(default_factory=Counter)


def plan_writes(
    rows: Iterable[RowState],
    stored: Mapping[SourceKey, Mapping[int, StoredChunk]],
    model: str,
    rules: Mapping[str, ChunkRule],
) -> WritePlan:
    """What to do for each row; `rules` holds each source table's chunking rule."""
    plan = WritePlan()
    for row in rows:
        existing = stored.get(row.key, {})
        if row.deleted or not row.content:
            if not row.deleted:
                plan.empty[row.source_table] += 1
            if existing or row.deleted:
                plan.remove.append(row)
            continue
        _plan_row(plan, row, make_chunks(row.content, rules[row.source_table]), existing, model)
    return plan


def _plan_row(
    plan: WritePlan,
    row: RowState,
    chunks: list[Chunk],
    existing: Mapping[int, StoredChunk],
    model: str,
) -> None:
    changed = False
    for chunk in chunks:
        stored = existing.get(chunk.number)
        work = ChunkWork(row, chunk)
        if stored is None or stored.content_hash != chunk.hash or stored.model != model:
            plan.to_embed.append(work)
            changed = True
        elif not stored.same_metadata:
            plan.metadata_only.append(work)
        else:
            plan.kept.append(work)
    if any(number >= len(chunks) for number in existing):
        plan.trim.append((row, len(chunks)))
    if not changed:
        plan.unchanged[row.source_table] += 1
