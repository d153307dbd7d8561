"""Embed and write: the one path every change takes to the sink, streamed or snapshotted.

Given rows' current states, ask the sink what it holds, embed only chunks whose content (or
model) changed, send rows the API rejects for good to dead letters, and write everything with
the checkpoint in one transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from cdc.apply.known import KnownRows, fingerprint
from cdc.apply.plan import WritePlan, plan_writes
from cdc.apply.settle import settle
from cdc.config import Settings
from cdc.content import chunk_tokens
from cdc.embedding.factory import chunk_rules, tokenizer_for
from cdc.embedding.providers import EmbeddingProvider, EmbeddingResult
from cdc.embedding.tokens import Tokenizer
from cdc.metrics import Metrics
from cdc.replication.positions import Position
from cdc.rows import ChunkWork, RowState, SourceKey
from cdc.sink.progress import ResyncPosition
from cdc.sink.reads import SinkReads
from cdc.sink.store import Sink
from cdc.sink.writer import SinkWrite

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    embedded: int
    written: int
    removed: int
    unchanged: int
    dead_letters: int


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A batch planned and embedded, ready to be written (`Applier.commit`)."""

    rows: Sequence[RowState]  # the rows planned (those known unchanged left out)
    write: SinkWrite
    plan: WritePlan
    prints: dict[SourceKey, bytes]
    started: float


class Applier:
    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        provider: EmbeddingProvider,
        metrics: Metrics,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._provider = provider
        self._metrics = metrics
        self._model = settings.embedding.model
        self._tokenizer = tokenizer or tokenizer_for(settings)
        self._rules = chunk_rules(settings, self._tokenizer)
        self._known = KnownRows(settings.sink.known_rows)
        self._reads = sink.reads
        # Requests are planned by a cheap upper bound on each input's tokens (UTF-8 bytes
        # for tiktoken's encodings): counting them exactly took most of a bulk load's CPU.
        # A tokens-per-minute budget needs the real counts: a bound would spend it fourfold.
        self._exact_counts = settings.embedding.tokens_per_minute is not None

    def sibling(self, sink: Sink) -> Applier:
        """An applier like this one writing through `sink` (another connection), sharing what
        this one knows the sink holds: siblings (the snapshot's writers) write disjoint rows,
        so no row's entry can be overtaken by an older commit of another sibling."""
        sibling = Applier(self._settings, sink, self._provider, self._metrics, self._tokenizer)
        sibling._known = self._known
        return sibling

    def forget_tables(self, tables: Sequence[str]) -> None:
        """Stop trusting what this process remembers the sink holds for `tables`."""
        self._known.forget_tables(tables)

    def looking_up_through(self, reads: SinkReads) -> None:
        """Read what the sink holds through `reads` (a connection of its own), so a batch can
        be prepared while this applier's connection writes the one before it."""
        self._reads = reads

    async def apply(
        self,
        truncated: Sequence[str],
        rows: Sequence[RowState],
        checkpoint: Position | None,
        positions: Sequence[ResyncPosition] = (),
        *,
        writer: int | None = None,
    ) -> ApplyResult:
        """Embed and write `rows`; `writer`: which parallel writer's share of a batch this
        is, whose position `checkpoint` is (None: the whole batch)."""
        prepared = await self.prepare(truncated, rows, checkpoint, positions, writer=writer)
        return await self.commit(prepared)

    async def prepare(
        self,
        truncated: Sequence[str],
        rows: Sequence[RowState],
        checkpoint: Position | None,
        positions: Sequence[ResyncPosition] = (),
        *,
        writer: int | None = None,
    ) -> PreparedWrite:
        """Everything before the write: what the sink holds, the plan, the embeddings."""
        started = time.monotonic()
        if writer is None:  # a parallel writer's share is counted with its whole batch
            self._metrics.batch_rows.observe(len(rows))
        prints = {row.key: fingerprint(row, self._model) for row in rows if not row.deleted}
        # Rows whose committed state this process already knows need no sink lookup at all.
        known = [r for r in rows if not r.deleted and self._known.unchanged(r.key, prints[r.key])]
        skipped = Counter(row.source_table for row in known)
        if known:
            known_keys = {row.key for row in known}
            rows = [row for row in rows if row.key not in known_keys]
        live = [row for row in rows if not row.deleted]
        stored = await self._reads.stored_chunks(live) if live else {}
        plan = plan_writes(rows, stored, self._model, self._rules)
        result = await self._embed(plan.to_embed)
        write = settle(
            plan, result, truncated=truncated, positions=positions, checkpoint=checkpoint
        )
        write.writer = writer
        self._log_rejections(write)
        plan.unchanged.update(skipped)
        return PreparedWrite(rows, write, plan, prints, started)

    async def commit(self, prepared: PreparedWrite) -> ApplyResult:
        """Write what `prepare` made ready, with its checkpoint, in one transaction."""
        write, plan = prepared.write, prepared.plan
        await self._sink.writer.write(write)
        self._remember(prepared.rows, write, prepared.prints)
        self._count(plan, write)
        if write.writer is None:
            self._metrics.flush_seconds.observe(time.monotonic() - prepared.started)
        return ApplyResult(
            embedded=len(write.upserts),
            written=len(write.upserts) + len(write.metadata_only),
            removed=len(write.remove),
            unchanged=plan.unchanged.total(),
            dead_letters=len(write.dead_letters),
        )

    async def _embed(self, works: list[ChunkWork]) -> EmbeddingResult | None:
        if not works:
            return None
        self._metrics.embedding_batch_size.observe(len(works))
        texts = [work.chunk.text for work in works]
        counts = chunk_tokens(
            [work.chunk for work in works], self._tokenizer, exact=self._exact_counts
        )
        result = await self._provider.embed(texts, counts)
        self._metrics.embedding_tokens.inc(result.tokens)
        return result

    def _log_rejections(self, write: SinkWrite) -> None:
        for letter in write.dead_letters:
            work = letter.work
            log.warning(
                "embedding rejected for %s id %s chunk %d, sent to dead letters: %s",
                work.row.source_table,
                work.row.source_id,
                work.chunk.number,
                letter.error,
            )

    def _remember(
        self, rows: Sequence[RowState], write: SinkWrite, prints: dict[SourceKey, bytes]
    ) -> None:
        """After the commit: what the sink now holds for each row of the batch."""
        known = self._known
        known.forget_tables(write.truncated)
        gone = {row.key for row in write.remove} | {d.work.row.key for d in write.dead_letters}
        known.forget(gone)
        for row in rows:
            if not row.deleted and row.key not in gone:
                known.remember(row.key, prints[row.key])

    def _count(self, plan: WritePlan, write: SinkWrite) -> None:
        m = self._metrics
        for table, count in Counter(w.row.source_table for w, _ in write.upserts).items():
            m.embeddings.labels(table=table).inc(count)
            m.vectors_written.labels(table=table, op="upsert").inc(count)
        for table, count in Counter(w.row.source_table for w in write.metadata_only).items():
            m.vectors_written.labels(table=table, op="metadata").inc(count)
        for table, count in Counter(row.source_table for row in write.remove).items():
            m.vectors_written.labels(table=table, op="delete").inc(count)
        for table, count in Counter(d.work.row.source_table for d in write.dead_letters).items():
            m.dead_letters.labels(table=table).inc(count)
        for reason, counts in (("unchanged", plan.unchanged), ("empty", plan.empty)):
            for table, count in counts.items():
                m.embeddings_skipped.labels(table=table, reason=reason).inc(count)
