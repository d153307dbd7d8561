"""What the streamer reports: change counts, liveness, the buffer and its WAL positions.

Counted locally per change and published per wake-up, because a labelled counter lookup per
change would cost as much as decoding it. Positions go to `Metrics.positions` as they are
(the server's WAL end, the confirmed LSN, the oldest pending commit time); the gauges derive
the lag from them when scraped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cdc.metrics import Health, Metrics
from cdc.replication.changes import RowChange, Transaction
from cdc.replication.frames import pg_timestamp
from cdc.replication.lsn import Lsn


class StreamObserver:
    """Publishes the streamer's view to the metrics and the health checks."""

    def __init__(self, metrics: Metrics, health: Health) -> None:
        self._metrics = metrics
        self._health = health
        self._changes: Counter[tuple[str, str]] = Counter()

    def count(self, transaction: Transaction) -> None:
        for change in transaction.changes:
            op = change.op if isinstance(change, RowChange) else "truncate"
            self._changes[(change.table, op)] += 1

    def streaming(self, on: bool) -> None:
        self._health.streaming = on
        if on:
            self._health.streaming_seen = True
        self._metrics.up.set(1 if on else 0)

    def beat(self) -> None:
        """The reader is alive; publish the changes counted since the last beat."""
        self._health.beat()
        for (table, op), count in self._changes.items():
            self._metrics.changes.labels(table=table, op=op).inc(count)
        self._changes.clear()

    def positions(
        self, buffered_rows: int, server: Lsn, confirmed: Lsn, commit_times: Iterable[int | None]
    ) -> None:
        """`commit_times`: the oldest pending commit (pgoutput time) of each batch not yet in
        the sink, None where a batch holds nothing."""
        self._metrics.buffer_rows.set(buffered_rows)
        times = [time for time in commit_times if time is not None]
        oldest = pg_timestamp(min(times)).timestamp() if times else None
        self._metrics.positions.from_stream(server, confirmed, oldest)
