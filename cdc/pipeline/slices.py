"""Applying a large batch in slices, so a table with a short `max_latency` can go between them.

A bulk load drains into one large batch that may take minutes to embed and write. When some
table asks for a short `max_latency`, the flusher applies such a batch in slices sized to take
about half that latency at the rate measured so far, and between two slices applies the changes
of due tables that fit in a slice: a course edited during a comment import lands in seconds,
not after the import. Only the last slice carries the checkpoint. Pure logic; the pipeline
does the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc.pipeline.buffer import Batch
from cdc.replication.changes import RowChange

# A slice is never smaller than this: below it, per-transaction costs dominate.
MIN_SLICE_ROWS = 64
# Rows per second assumed before the first slice was measured.
INITIAL_RATE = 1000.0
# Weight of the newest measurement in the running rate.
RATE_WEIGHT = 0.5


class SliceSizer:
    """Rows per slice so one slice takes about `target` seconds at the measured rate.

    With no target (no table sets `max_latency`) a batch is applied whole, in one slice.
    """

    def __init__(self, target: float | None) -> None:
        self.target = target
        self.rate = INITIAL_RATE

    def size(self, remaining: int) -> int:
        if self.target is None:
            return max(remaining, 1)
        return max(MIN_SLICE_ROWS, int(self.rate * self.target))

    def observe(self, rows: int, seconds: float) -> None:
        """Fold one applied slice into the running rate."""
        if rows < MIN_SLICE_ROWS or seconds <= 0:
            return  # too small to say anything about throughput
        measured = rows / seconds
        self.rate = RATE_WEIGHT * measured + (1 - RATE_WEIGHT) * self.rate


def slice_target(latencies: Sequence[float | None]) -> float | None:
    """Half the shortest `max_latency` a table sets, or None when none sets one."""
    given = [latency for latency in latencies if latency is not None]
    return min(given) / 2 if given else None


def supersede(rows: Sequence[RowChange], newer: Batch) -> list[RowChange]:
    """`rows` still to apply, less those that `newer` (drained later) replaces: the same row,
    or any row of a table that `newer` truncates."""
    replaced = {(change.table, change.source_id) for change in newer.rows}
    return [
        change
        for change in rows
        if change.table not in newer.truncated and (change.table, change.source_id) not in replaced
    ]
