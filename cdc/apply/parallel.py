"""The sink's parallel writers (`sink.writers`): a streamed batch applied over several sessions.

Each writer is an `Applier` on a sink connection of its own. A batch's rows are split by key
(`cdc.partitions`), so no two writers touch one row and each row's changes stay in order; the
writers embed and write their shares at once, each committing with its own position, and the
batch is done (its LSN may be confirmed) only when all of them committed. A crash between their
commits leaves their positions apart, and the restart skips, writer by writer, what each holds
(`cdc.replication.positions.WriterPositions`).

A batch with a truncate or a resync's read is applied by the first writer alone, saving every
writer's position: a truncate removes rows of every partition, and a resync's position may be
saved only with all of its rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from cdc.apply.applier import Applier, ApplyResult, PreparedWrite
from cdc.metrics import Metrics
from cdc.partitions import split
from cdc.replication.positions import Position, WriterPositions
from cdc.rows import RowState
from cdc.sink.progress import ResyncPosition

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch planned and embedded by each writer it went to, ready to be written."""

    shares: list[tuple[Applier, PreparedWrite]]
    started: float
    # Applied by the first writer alone, for all of them (its own metrics count it).
    whole: bool


class WriterPool:
    """Applies batches over one applier per writer; the first is the session's own.

    `prepare` (plan and embed) and `commit` (write) are apart so that the streamer can
    prepare a batch while the one before it is written (`cdc.pipeline.flusher`).
    """

    def __init__(
        self,
        appliers: Sequence[Applier],
        metrics: Metrics,
        stored: WriterPositions | None = None,
    ) -> None:
        if not appliers:
            raise ValueError("a writer pool needs at least one applier")
        self._appliers = list(appliers)
        self._metrics = metrics
        # Where each writer stood at the start, if they stood apart: none moves back.
        self._stood = None
        if stored is not None and not stored.even and len(stored.positions) == len(appliers):
            self._stood = stored

    @property
    def size(self) -> int:
        return len(self._appliers)

    async def prepare(
        self,
        truncated: Sequence[str],
        rows: Sequence[RowState],
        checkpoint: Position | None,
        positions: Sequence[ResyncPosition] = (),
    ) -> PreparedBatch:
        started = time.monotonic()
        first = self._appliers[0]
        if self.size == 1 or truncated or positions:
            prepared = await first.prepare(truncated, rows, checkpoint, positions)
            return PreparedBatch([(first, prepared)], started, whole=True)
        self._metrics.batch_rows.observe(len(rows))
        shares = split(rows, lambda row: row.key, self.size)
        # A writer with no rows still saves its position when the batch moves the checkpoint:
        # a position inside a large transaction must be saved (its writer decides).
        busy = [
            (index, applier, share)
            for index, (applier, share) in enumerate(zip(self._appliers, shares, strict=True))
            if share or checkpoint is not None
        ]
        writes = await _all(
            applier.prepare([], share, self._checkpoint_of(index, checkpoint), writer=index)
            for index, applier, share in busy
        )
        appliers = [applier for _, applier, _ in busy]
        return PreparedBatch(list(zip(appliers, writes, strict=True)), started, whole=False)

    async def commit(self, batch: PreparedBatch) -> ApplyResult:
        """Every writer's share written, each in its own transaction with its position."""
        results = await _all(applier.commit(prepared) for applier, prepared in batch.shares)
        if not batch.whole:
            self._metrics.flush_seconds.observe(time.monotonic() - batch.started)
        return _total(results)

    def _checkpoint_of(self, writer: int, checkpoint: Position | None) -> Position | None:
        """The position `writer` saves with its share: none while it is still ahead of the
        batch (after a crash between commits), so a second crash finds it where it was."""
        stood = self._stood
        if checkpoint is None or stood is None or stood.moves(writer, checkpoint):
            return checkpoint
        return None


async def _all(jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Run `jobs` at once and wait for every one to finish (commit or fail) before the first
    failure is raised: none is left mid-transaction behind it."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


def _total(results: Sequence[ApplyResult]) -> ApplyResult:
    return ApplyResult(
        embedded=sum(r.embedded for r in results),
        written=sum(r.written for r in results),
        removed=sum(r.removed for r in results),
        unchanged=sum(r.unchanged for r in results),
        dead_letters=sum(r.dead_letters for r in results),
    )
