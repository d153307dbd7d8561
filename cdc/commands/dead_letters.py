"""`cdc dead-letters`: list the rows the embedding API rejected for good, and retry them.

Retry re-embeds each dead-lettered row from the source's *current* content through the
streamer's own write path (`Applier`): rows that land leave the dead-letter table, rows the API
rejects again stay there with their attempt count raised, rows gone from the source lose their
dead letter. It writes no checkpoint.

It is safe while `cdc run` streams. The hazard is an old read landing after a newer change:
retry reads row X, the streamer applies a later edit of X, then retry writes what it read. So
each retry batch holds the sink's writer lock (`Sink.writer_lock`) from its source read to its
sink commit, and every sink write of the streamer takes the same lock: an edit committed after
the read is written after the retry. An edit committed before the read and applied by the
streamer after the retry is older than what retry wrote, but the stream still holds every
later change of the row, the latest being exactly what retry read: the sink ends at the
row's current state either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from cdc.apply.applier import Applier
from cdc.commands.scope import selected_tables
from cdc.config import Settings
from cdc.db import Conn, connect
from cdc.embedding.factory import ProviderFactory
from cdc.ids import key_values
from cdc.metrics import Metrics
from cdc.rows import RowState
from cdc.sink.provision import check_sink_exists
from cdc.sink.reads import DeadLetterRow, dead_letter_rows
from cdc.sink.store import Sink
from cdc.source.reads import SourceTable, current_state, describe_tables, fetch_rows

log = logging.getLogger(__name__)
# Rows per retry batch: the writer lock is held for one batch's embedding, so the streamer
# waits at most that long.
RETRY_BATCH_ROWS = 100
ERROR_WIDTH = 100


@dataclass(slots=True)
class RetryReport:
    """What one retry did, per source table: rows retried, landed (or gone), rejected again."""

    retried: dict[str, int]
    resolved: dict[str, int]
    failed: dict[str, int]

    @property
    def still_failing(self) -> int:
        return sum(self.failed.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            table: {
                "retried": self.retried[table],
                "resolved": self.resolved[table],
                "failed": self.failed[table],
            }
            for table in self.retried
        }


# -- list -------------------------------------------------------------------------------------


async def list_dead_letters(settings: Settings, table: str | None) -> list[DeadLetterRow]:
    tables = [config.table for config in selected_tables(settings, table)]
    async with AsyncExitStack() as stack:
        conn = await connect(settings.sink_dsn, "sink")
        stack.push_async_callback(conn.close)
        await check_sink_exists(settings, conn)
        return await dead_letter_rows(conn, settings, tables)


def render_list(rows: Sequence[DeadLetterRow]) -> str:
    if not rows:
        return "no dead letters"
    lines = [
        f"{row.source_table}  id {row.source_id}  chunk {row.chunk}  attempts {row.attempts}  "
        f"last {row.last_failed_at:%Y-%m-%d %H:%M:%S%z}  {_shorten(row.error)}"
        for row in rows
    ]
    ids = {(row.source_table, row.source_id) for row in rows}
    lines.append(
        f"{len(ids)} rows dead-lettered; `cdc dead-letters retry` re-embeds them from the "
        "source's current content"
    )
    return "\n".join(lines)


def _shorten(error: str) -> str:
    line = " ".join(error.split())
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 1] + "…"


# -- retry ------------------------------------------------------------------------------------


async def retry_dead_letters(
    settings: Settings, table: str | None, make_provider: ProviderFactory
) -> RetryReport:
    configs = selected_tables(settings, table)
    report = RetryReport({}, {}, {})
    async with AsyncExitStack() as stack:
        source = await connect(settings.source.dsn, "source")
        stack.push_async_callback(source.close)
        conn = await connect(settings.sink_dsn, "sink")
        stack.push_async_callback(conn.close)
        await check_sink_exists(settings, conn)
        sink = await Sink.connect(conn, settings)
        metrics = Metrics()  # nobody scrapes a one-off command
        provider = make_provider(settings, metrics)
        stack.push_async_callback(provider.aclose)
        applier = Applier(settings, sink, provider, metrics)
        for described in await describe_tables(source, configs):
            await _retry_table(described, source, sink, applier, report)
    return report


async def _retry_table(
    table: SourceTable, source: Conn, sink: Sink, applier: Applier, report: RetryReport
) -> None:
    name = table.name
    ids = await sink.reads.dead_letter_ids(name)
    report.retried[name] = len(ids)
    report.resolved[name] = report.failed[name] = 0
    for start in range(0, len(ids), RETRY_BATCH_ROWS):
        batch = ids[start : start + RETRY_BATCH_ROWS]
        async with sink.writer.writer_lock():
            states = await _current_states(source, table, batch)
            await applier.apply([], states, checkpoint=None)
        async with sink.connection.transaction():
            failing = await sink.reads.dead_lettered(name, batch)
        report.failed[name] += len(failing)
        report.resolved[name] += len(batch) - len(failing)
    log.info(
        "retried %d dead-lettered rows of %s: %d resolved, %d rejected again",
        len(ids),
        name,
        report.resolved[name],
        report.failed[name],
    )


async def _current_states(
    source: Conn, table: SourceTable, source_ids: Sequence[str]
) -> list[RowState]:
    """Each row's current state in the source; a row that is gone is a deletion."""
    width = len(table.key_names)
    keys = {source_id: key_values(source_id, width) for source_id in source_ids}
    found = await fetch_rows(source, table, [key for key in keys.values() if key is not None])
    states = []
    for source_id, key in keys.items():
        values = None if key is None else found.get(key)
        if key is None or values is None:
            states.append(RowState(table.name, source_id, "", {}, None, deleted=True))
        else:
            states.append(current_state(table, key, values))
    return states


def render_retry(report: RetryReport) -> str:
    lines = [
        f"{table}: {report.retried[table]} rows retried, {report.resolved[table]} resolved, "
        f"{report.failed[table]} rejected again"
        for table in report.retried
    ]
    if report.still_failing:
        lines.append(
            f"{report.still_failing} rows are still rejected (attempts raised); "
            "`cdc dead-letters list` shows the errors"
        )
    return "\n".join(lines)
