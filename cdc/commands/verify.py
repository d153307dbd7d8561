"""`cdc verify`: compare the source's rows with what the sink holds, and repair the difference.

Nothing is embedded to verify: each row's expected chunks (the content rule, hashed) are compared
with the hashes and models the sink stores. The source is read in key order through a
server-side cursor inside one REPEATABLE READ snapshot, the sink is asked about exactly each
batch's keys, and the sink's ids are streamed back to find orphans, so memory stays bounded
whatever the table size. Repair sends exactly the drifted rows through the streamer's own path
(`Applier`), which embeds only chunks whose hash or model differ, trims surplus chunks and sends
rejected rows to dead letters.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence, Set
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg

from cdc.apply.applier import Applier
from cdc.commands.scope import selected_tables
from cdc.config import Settings
from cdc.content import ChunkRule, make_chunks
from cdc.db import Conn, connect
from cdc.embedding.factory import ProviderFactory, chunk_rules
from cdc.errors import CdcError
from cdc.metrics import Metrics
from cdc.replication.slots import slot_info
from cdc.rows import RowState
from cdc.sink.provision import check_sink_exists
from cdc.sink.store import Sink
from cdc.source.reads import SourceTable, describe_tables, existing_ids, row_state, stream_table

log = logging.getLogger(__name__)
BATCH_ROWS = 1000
EXAMPLES = 5


class Verdict(StrEnum):
    """What verify says about one source row (or, for orphans, one sink id)."""

    OK = "ok"
    MISSING = "missing"
    STALE = "stale"
    WRONG_MODEL = "wrong_model"
    WRONG_CHUNKS = "wrong_chunks"
    ORPHAN = "orphans"
    # The API rejected the row for good; it waits in the dead-letter table, not drift.
    DEAD_LETTER = "dead_letters"


DRIFT = (
    Verdict.MISSING,
    Verdict.STALE,
    Verdict.WRONG_MODEL,
    Verdict.WRONG_CHUNKS,
    Verdict.ORPHAN,
)


@dataclass(frozen=True, slots=True)
class HeldChunk:
    """One chunk as the sink stores it."""

    content_hash: str
    model: str


# -- pure comparison --------------------------------------------------------------------------


def classify(
    row: RowState,
    held: Mapping[int, HeldChunk],
    *,
    dead_lettered: bool,
    model: str,
    rule: ChunkRule,
) -> Verdict:
    """Compare a live row's expected chunks with the chunks the sink holds for it.

    Chunk numbers first (a missing or surplus chunk), then content hashes, then the model: a
    row wrong in several ways is reported once, by the first.
    """
    # The streamer's own chunking rule: verify expects exactly the chunks it writes.
    expected = make_chunks(row.content, rule)
    if not held:
        if not expected:
            return Verdict.OK
        return Verdict.DEAD_LETTER if dead_lettered else Verdict.MISSING
    if set(held) != {chunk.number for chunk in expected}:
        return Verdict.WRONG_CHUNKS
    if any(held[chunk.number].content_hash != chunk.hash for chunk in expected):
        return Verdict.STALE
    if any(held[chunk.number].model != model for chunk in expected):
        return Verdict.WRONG_MODEL
    return Verdict.OK


def classify_batch(
    rows: Iterable[RowState],
    held: Mapping[str, Mapping[int, HeldChunk]],
    dead_lettered: Set[str],
    model: str,
    rule: ChunkRule,
) -> list[tuple[RowState, Verdict]]:
    """`classify` for each row; `held` and `dead_lettered` are keyed by source_id."""
    return [
        (
            row,
            classify(
                row,
                held.get(row.source_id, {}),
                dead_lettered=row.source_id in dead_lettered,
                model=model,
                rule=rule,
            ),
        )
        for row in rows
    ]


def group_held(stored: Iterable[tuple[str, int, str, str]]) -> dict[str, dict[int, HeldChunk]]:
    """(source_id, chunk, content_hash, model) rows -> source_id -> chunk -> `HeldChunk`."""
    held: dict[str, dict[int, HeldChunk]] = defaultdict(dict)
    for source_id, chunk, digest, model in stored:
        held[source_id][chunk] = HeldChunk(digest, model)
    return held


def orphans(source_ids: Iterable[str], existing: Set[str]) -> list[str]:
    """The sink ids whose source row does not exist."""
    return [source_id for source_id in source_ids if source_id not in existing]


# -- reports ----------------------------------------------------------------------------------


@dataclass(slots=True)
class TableReport:
    table: str
    checked: int = 0
    counts: Counter[Verdict] = field(default_factory=Counter)
    examples: dict[Verdict, list[str]] = field(default_factory=dict)

    def record(self, verdict: Verdict, source_id: str) -> None:
        self.counts[verdict] += 1
        if verdict is Verdict.OK:
            return
        shown = self.examples.setdefault(verdict, [])
        if len(shown) < EXAMPLES:
            shown.append(source_id)

    @property
    def drift(self) -> int:
        return sum(self.counts[verdict] for verdict in DRIFT)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            **{verdict.value: self.counts[verdict] for verdict in Verdict},
            "examples": {verdict.value: ids for verdict, ids in self.examples.items()},
        }


@dataclass(slots=True)
class VerifyReport:
    tables: list[TableReport]

    @property
    def drift(self) -> int:
        return sum(table.drift for table in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "drift": self.drift > 0,
            "tables": {table.table: table.as_dict() for table in self.tables},
        }


@dataclass(frozen=True, slots=True)
class Repaired:
    """What `--repair` found (and fixed), and what it cost."""

    found: VerifyReport
    embedded: int
    removed: int


@dataclass(frozen=True, slots=True)
class Outcome:
    report: VerifyReport  # the sink as last verified (after the repair, with --repair)
    streaming: bool  # a `cdc run` held the slot while verifying
    repaired: Repaired | None = None

    @property
    def drift(self) -> bool:
        return self.report.drift > 0

    def as_dict(self) -> dict[str, Any]:
        result = {**self.report.as_dict(), "streaming": self.streaming}
        if self.repaired is not None:
            result["repaired"] = {
                **self.repaired.found.as_dict(),
                "embedded_chunks": self.repaired.embedded,
                "removed_rows": self.repaired.removed,
            }
        return result


def render_report(report: VerifyReport) -> list[str]:
    lines = []
    for table in report.tables:
        state = "DRIFT" if table.drift else "in step"
        lines.append(
            f"{table.table}: {table.checked} rows checked, {table.counts[Verdict.OK]} ok ({state})"
        )
        for verdict in (*DRIFT, Verdict.DEAD_LETTER):
            shown = table.examples.get(verdict)
            example = f"  e.g. {', '.join(shown)}" if shown else ""
            lines.append(f"  {verdict.value:<14}{table.counts[verdict]:>8}{example}")
    return lines


def render_outcome(outcome: Outcome) -> str:
    lines = []
    if outcome.repaired is not None:
        lines += ["found:", *render_report(outcome.repaired.found)]
        lines.append(
            f"repaired: {outcome.repaired.embedded} chunks embedded, "
            f"{outcome.repaired.removed} orphaned rows removed"
        )
        lines.append("after repair:")
    lines += render_report(outcome.report)
    if outcome.drift:
        lines.append(
            f"DRIFT: {outcome.report.drift} rows differ from the source; stop `cdc run`, "
            "then `cdc verify --repair` fixes them"
        )
        if outcome.streaming:
            lines.append(
                "note: `cdc run` was streaming; rows changed moments ago may show as drift "
                "until it catches up"
            )
    else:
        lines.append("in step: the sink holds exactly the vectors of the source's rows")
    return "\n".join(lines)


# -- I/O --------------------------------------------------------------------------------------


async def verify(
    settings: Settings, table: str | None, repair: bool, make_provider: ProviderFactory
) -> Outcome:
    """Check the configured tables (or `table`); with `repair`, fix the drift and check again."""
    configs = selected_tables(settings, table)
    async with AsyncExitStack() as stack:
        source = await connect(settings.source.dsn, "source")
        stack.push_async_callback(source.close)
        sink_conn = await connect(settings.sink_dsn, "sink")
        stack.push_async_callback(sink_conn.close)
        slot = await slot_info(source, settings.source.slot)
        streaming = slot is not None and slot.active
        if repair and streaming:
            raise CdcError(
                f"slot {settings.source.slot} is in use by a running `cdc run`: repair writes "
                "would race with it. Stop `cdc run`, run `cdc verify --repair`, then start it "
                "again (it streams on from where it stopped)"
            )
        await check_sink_exists(settings, sink_conn)
        tables = await describe_tables(source, configs)
        reader = Sink(sink_conn, settings)
        # Every pass reads one source snapshot: the check after a repair compares the sink with
        # the very rows the repair wrote; later source changes wait in the slot for `cdc run`.
        await source.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await source.set_read_only(True)
        async with source.transaction():
            if not repair:
                return Outcome(await Checker(settings, source, reader).run(tables), streaming)
            fixer = await _fixer(settings, stack, make_provider)
            found = await Checker(settings, source, reader, fixer).run(tables)
            after = await Checker(settings, source, reader).run(tables)
        return Outcome(after, streaming, Repaired(found, fixer.embedded, fixer.removed))


async def _fixer(
    settings: Settings, stack: AsyncExitStack, make_provider: ProviderFactory
) -> Fixer:
    """An `Applier` of its own: a sink connection, a provider, metrics nobody scrapes."""
    conn = await connect(settings.sink_dsn, "sink")
    stack.push_async_callback(conn.close)
    metrics = Metrics()
    provider = make_provider(settings, metrics)
    stack.push_async_callback(provider.aclose)
    return Fixer(Applier(settings, await Sink.connect(conn, settings), provider, metrics))


class Fixer:
    """Repairs drift through the streamer's own write path, counting what it did."""

    def __init__(self, applier: Applier) -> None:
        self._applier = applier
        self.embedded = 0
        self.removed = 0

    async def refresh(self, rows: Sequence[RowState]) -> None:
        """Write these rows' current content; only chunks whose hash or model differ are
        embedded again."""
        if rows:
            result = await self._applier.apply([], rows, checkpoint=None)
            self.embedded += result.embedded

    async def remove(self, source_table: str, source_ids: Sequence[str]) -> None:
        """Delete the vectors (and dead letters) of rows that no longer exist."""
        if source_ids:
            gone = [RowState(source_table, i, "", {}, None, deleted=True) for i in source_ids]
            result = await self._applier.apply([], gone, checkpoint=None)
            self.removed += result.removed


@dataclass(frozen=True, slots=True)
class Checker:
    """One pass over the tables; `fixer` repairs as it goes."""

    settings: Settings
    source: Conn
    sink: Sink
    fixer: Fixer | None = None

    async def run(self, tables: Sequence[SourceTable]) -> VerifyReport:
        """Check `tables`; the caller holds the source transaction whose snapshot is read."""
        reports = []
        for table in tables:
            report = TableReport(table.name)
            await self._rows(table, report)
            await self._orphans(table, report)
            log.info("verified %s: %d rows, %d drift", table.name, report.checked, report.drift)
            reports.append(report)
        return VerifyReport(reports)

    async def _rows(self, table: SourceTable, report: TableReport) -> None:
        embedding = self.settings.embedding
        rules = chunk_rules(self.settings)
        any_dead = await self.sink.reads.dead_letter_count() > 0
        async for rows in stream_table(self.source, table, BATCH_ROWS):
            states = [row_state(table, row) for row in rows]
            ids = [state.source_id for state in states]
            held = group_held(await self.sink.reads.held_chunks(table.name, ids))
            dead = await self.sink.reads.dead_lettered(table.name, ids) if any_dead else set()
            verdicts = classify_batch(states, held, dead, embedding.model, rules[table.name])
            for state, verdict in verdicts:
                report.record(verdict, state.source_id)
            report.checked += len(states)
            if self.fixer is not None:
                await self.fixer.refresh([row for row, verdict in verdicts if verdict in DRIFT])

    async def _orphans(self, table: SourceTable, report: TableReport) -> None:
        async for ids in self.sink.reads.stored_source_ids(table.name, BATCH_ROWS):
            gone = orphans(ids, await existing_ids(self.source, table, ids))
            for source_id in gone:
                report.record(Verdict.ORPHAN, source_id)
            if self.fixer is not None:
                await self.fixer.remove(table.name, gone)
