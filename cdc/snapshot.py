"""The initial snapshot: embed the rows that exist when the slot is created.

The slot exports the snapshot it starts from; reading the tables inside that snapshot and then
streaming from the slot's consistent point misses nothing and applies nothing twice. The rows
take the same embed -> sink path as streamed changes, so content already in the sink (a
snapshot interrupted and started again) costs no API call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import psycopg
from psycopg import AsyncConnection, sql

from cdc.apply import Applier
from cdc.lsn import Lsn
from cdc.metrics import Metrics
from cdc.sink import SeenKeys, Sink
from cdc.source import SourceTable, row_state, stream_table
from cdc.stream import ReplicationStream

log = logging.getLogger(__name__)
SNAPSHOT_BATCH_ROWS = 1000


class SnapshotInterrupted(Exception):
    """Stop was requested mid-snapshot; the next start takes it again."""


async def take_snapshot(
    *,
    source_dsn: str,
    stream: ReplicationStream,
    tables: Sequence[SourceTable],
    sink: Sink,
    applier: Applier,
    metrics: Metrics,
    stop: asyncio.Event,
) -> Lsn:
    """Create the slot, embed every existing row, and return the LSN streaming starts from."""
    created = stream.create_slot()
    log.info("created slot at %s; snapshot %s", created.consistent_point, created.snapshot_name)
    await sink.mark_snapshot(done=False, checkpoint=None)
    seen = SeenKeys(sink)
    await seen.start()
    conn = await AsyncConnection.connect(source_dsn)
    try:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction():
            await conn.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(created.snapshot_name))
            )
            for table in tables:
                await _snapshot_table(
                    conn=conn, table=table, seen=seen, applier=applier, metrics=metrics, stop=stop
                )
    finally:
        await conn.close()
    removed = await seen.remove_unseen([t.name for t in tables])
    if removed:
        log.info("snapshot removed %d sink rows whose source rows are gone", removed)
    await sink.mark_snapshot(done=True, checkpoint=created.consistent_point)
    return created.consistent_point


async def _snapshot_table(
    *,
    conn: AsyncConnection[tuple[str | None, ...]],
    table: SourceTable,
    seen: SeenKeys,
    applier: Applier,
    metrics: Metrics,
    stop: asyncio.Event,
) -> None:
    total = 0
    async for rows in stream_table(conn, table, SNAPSHOT_BATCH_ROWS):
        if stop.is_set():
            raise SnapshotInterrupted(f"stopped during the snapshot of {table.name}")
        states = [row_state(table, row) for row in rows]
        await seen.add([state.key for state in states])
        await applier.apply([], states, checkpoint=None)
        metrics.snapshot_rows.labels(table=table.name).inc(len(rows))
        total += len(rows)
    log.info("snapshot of %s: %d rows", table.name, total)
