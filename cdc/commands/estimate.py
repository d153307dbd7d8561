"""`cdc estimate`: what a first snapshot or a resync would embed and cost, before running it.

The tables are read as `cdc run` reads them for a snapshot (key order, `snapshot.batch_rows` a
batch) and each batch goes through the applier's own planning (`plan_writes`): the same content
rule, chunking and tokenizer, and the same question to the sink, so chunks the sink already holds
with the same content hash and model count as free. Each batch's chunks to embed are cut into
requests by the provider's own planning (`request_count`). Nothing is embedded, no slot is
created, nothing is written: both connections are read-only.

A table the planner estimates at more than `sample_rows` rows is read as a `TABLESAMPLE` of
about that many rows, and its figures are extrapolated from the sample (and say so): SYSTEM (whole
pages, only those read) when the sample spans enough pages for their differences to average out,
else BERNOULLI (single rows).
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import psycopg
from psycopg import sql

from cdc.apply.plan import WritePlan, plan_writes
from cdc.commands.scope import selected_tables
from cdc.config import Settings, TableConfig
from cdc.content import ChunkRule, chunk_tokens
from cdc.db import Conn, connect
from cdc.embedding.factory import chunk_rules, request_count, tokenizer_for
from cdc.embedding.providers import MAX_BATCH_TOKENS
from cdc.embedding.tokens import Tokenizer
from cdc.errors import SourceUnavailable
from cdc.rows import ChunkWork, RowState, SourceKey, StoredChunk
from cdc.sink.provision import vector_type_of, wanted_vector_type
from cdc.sink.reads import SinkReads
from cdc.sink.store import Sink
from cdc.source.estimates import TableSize, table_size
from cdc.source.reads import SourceTable, describe_tables, row_state, stream_table, tablesample

# Tables the planner estimates at more rows than this are sampled (`--sample-rows`).
DEFAULT_SAMPLE_ROWS = 10_000
# A page sample (SYSTEM) needs this many pages for the rows of a page, stored together and
# often alike, to average out; fewer, and single rows are drawn (BERNOULLI).
SYSTEM_MIN_PAGES = 100
# Notes under the table are wrapped at this width.
NOTE_WIDTH = 100
# The same sample each time for an unchanged table: estimates can be compared.
SAMPLE_SEED = 20_250_101

Method = Literal["SYSTEM", "BERNOULLI"]
# Requests for one embed call of texts with these token counts (`request_count`, bound).
Planner = Callable[[list[int]], int]
# What the sink holds for a table's rows: comparable vectors, no table yet, or vectors a resync
# would rebuild (another vector type or size), which save nothing.
SinkUse = Literal["compared", "absent", "rebuilt"]


# -- pure -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SamplePlan:
    """How a large table is read: `percent` of it, by `method`."""

    method: Method
    percent: float
    estimated_rows: int  # the planner's estimate that called for a sample


def choose_sample(size: TableSize, target: int) -> SamplePlan | None:
    """A sample of about `target` rows when the planner expects more, else None (read all)."""
    if size.rows <= target:
        return None
    percent = 100.0 * target / size.rows
    method: Method = "SYSTEM" if size.pages * percent / 100 >= SYSTEM_MIN_PAGES else "BERNOULLI"
    return SamplePlan(method, percent, size.rows)


@dataclass(slots=True)
class Figures:
    """What reading some rows found: the counts `cdc estimate` reports, per table and in all."""

    rows: int = 0
    rows_with_content: int = 0
    chunks: int = 0
    tokens: int = 0
    # Rows with content whose every chunk the sink holds with the same hash and model.
    free_rows: int = 0
    free_chunks: int = 0
    embed_chunks: int = 0
    embed_tokens: int = 0
    requests: int = 0

    def __add__(self, other: Figures) -> Figures:
        return Figures(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scaled(self, factor: float) -> Figures:
        """Every count times `factor`, rounded (requests are planned apart: see
        `extrapolated_requests`)."""
        return Figures(*(round(getattr(self, f.name) * factor) for f in fields(self)))


def batch_figures(
    rows: Sequence[RowState], plan: WritePlan, tokens: dict[int, int], requests: int
) -> Figures:
    """One batch's figures from the applier's plan; `tokens` maps id(chunk work) to its count."""
    chunks = [*plan.to_embed, *plan.metadata_only, *plan.kept]
    empty = sum(plan.empty.values())
    return Figures(
        rows=len(rows),
        rows_with_content=len(rows) - empty,
        chunks=len(chunks),
        tokens=sum(tokens[id(work)] for work in chunks),
        free_rows=sum(plan.unchanged.values()),
        free_chunks=len(chunks) - len(plan.to_embed),
        embed_chunks=len(plan.to_embed),
        embed_tokens=sum(tokens[id(work)] for work in plan.to_embed),
        requests=requests,
    )


def per_row_embeds(plan: WritePlan, tokens: dict[int, int]) -> list[list[int]]:
    """The token counts of each row's chunks to embed, row by row in the batch's order (rows
    with nothing to embed left out). What a sample's requests are planned from."""
    by_row: dict[SourceKey, list[int]] = {}
    for work in plan.to_embed:
        by_row.setdefault(work.row.key, []).append(tokens[id(work)])
    return list(by_row.values())


def extrapolated_requests(
    sampled: Sequence[list[int]], empty_rows: int, rows: int, batch_rows: int, plan: Planner
) -> int:
    """Requests to embed `rows` rows like the sampled ones, read `batch_rows` at a time.

    `sampled` holds the sampled rows that have chunks to embed (their chunks' token counts),
    `empty_rows` how many sampled rows have none. Batches are made of the sample's rows in turn
    (the rows to embed spread evenly among the others), each planned as `cdc run` would plan it;
    the full batches' average is multiplied out, the last, partial batch planned on its own.
    """
    if not sampled or rows <= 0:
        return 0
    mixed = _spread(list(sampled), empty_rows)
    full, rest = divmod(rows, batch_rows)
    passes = max(1, math.ceil(len(mixed) / batch_rows))
    cycle = itertools.cycle(mixed)
    average = sum(plan(_flat(itertools.islice(cycle, batch_rows))) for _ in range(passes)) / passes
    last = plan(_flat(itertools.islice(cycle, rest))) if rest else 0
    return math.ceil(full * average) + last


def _spread(rows: list[list[int]], empty: int) -> list[list[int]]:
    """The rows with chunks to embed, with `empty` rows without any spread evenly among them."""
    total = len(rows) + empty
    mixed: list[list[int]] = [[] for _ in range(total)]
    for index, row in enumerate(rows):
        mixed[index * total // len(rows)] = row
    return mixed


def _flat(rows: Iterable[list[int]]) -> list[int]:
    return [count for row in rows for count in row]


def cost(tokens: int, price: float | None) -> float | None:
    """What `tokens` input tokens cost at `price` per million; None when the price is unknown."""
    return None if price is None else tokens * price / 1_000_000


@dataclass(frozen=True, slots=True)
class Sampled:
    """How a table's figures were extrapolated: from `rows` rows drawn by `plan`."""

    plan: SamplePlan
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.plan.method,
            "percent": round(self.plan.percent, 6),
            "sample_rows": self.rows,
            "planner_rows": self.plan.estimated_rows,
        }


@dataclass(frozen=True, slots=True)
class TableEstimate:
    table: str
    figures: Figures
    sink: SinkUse
    sampled: Sampled | None = None

    def as_dict(self, price: float | None) -> dict[str, Any]:
        return {
            **asdict(self.figures),
            "cost": cost(self.figures.embed_tokens, price),
            "sink": self.sink,
            "estimated": self.sampled is not None,
            "sample": self.sampled.as_dict() if self.sampled else None,
        }


@dataclass(frozen=True, slots=True)
class Estimate:
    """The whole answer, with the assumptions it rests on."""

    provider: str
    model: str
    price: float | None  # per million tokens
    batch_rows: int
    batch_size: int
    tables: list[TableEstimate] = field(default_factory=list)

    @property
    def total(self) -> Figures:
        return sum((t.figures for t in self.tables), Figures())

    @property
    def estimated(self) -> bool:
        return any(t.sampled is not None for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        total = self.total
        return {
            "provider": self.provider,
            "model": self.model,
            "price_per_million_tokens": self.price,
            "batch_rows": self.batch_rows,
            "batch_size": self.batch_size,
            "request_tokens": MAX_BATCH_TOKENS if self.provider == "openai" else None,
            "tables": {t.table: t.as_dict(self.price) for t in self.tables},
            "total": {
                **asdict(total),
                "cost": cost(total.embed_tokens, self.price),
                "estimated": self.estimated,
            },
        }


# -- text -------------------------------------------------------------------------------------

# (title, Figures attribute); the last four are what the snapshot sends, under one heading.
_COLUMNS = (
    ("rows", "rows"),
    ("content", "rows_with_content"),
    ("chunks", "chunks"),
    ("tokens", "tokens"),
    ("free rows", "free_rows"),
    ("chunks", "embed_chunks"),
    ("tokens", "embed_tokens"),
    ("requests", "requests"),
)
_EMBED_HEADING = "to embed"
_EMBEDDED_COLUMNS = 4  # the last columns: chunks, tokens, requests, cost


def render_estimate(estimate: Estimate) -> str:
    """A small table, a line per source table (and the total), then what the figures assume.
    A figure extrapolated from a sample is marked `~`."""
    lines = [
        _cells(table.table, table.figures, estimate.price, table.sampled is not None)
        for table in estimate.tables
    ]
    if len(estimate.tables) > 1:
        lines.append(_cells("total", estimate.total, estimate.price, estimate.estimated))
    header = ["table", *(title for title, _ in _COLUMNS), "cost"]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    table = [_heading(widths), _line(header, widths), *(_line(row, widths) for row in lines)]
    notes = [textwrap.fill(note, NOTE_WIDTH, subsequent_indent="  ") for note in _notes(estimate)]
    return "\n".join([*table, "", *notes])


def _cells(name: str, figures: Figures, price: float | None, estimated: bool) -> list[str]:
    mark = "~" if estimated else ""
    spent = cost(figures.embed_tokens, price)
    money = "?" if spent is None else f"{mark}{_money(spent)}"
    return [name, *(f"{mark}{getattr(figures, key):,}" for _, key in _COLUMNS), money]


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    name, *numbers = cells
    aligned = (f"{c:>{w}}" for c, w in zip(numbers, widths[1:], strict=True))
    return "  ".join([f"{name:<{widths[0]}}", *aligned])


def _heading(widths: Sequence[int]) -> str:
    """`to embed`, centred in dashes over the columns of what the snapshot sends."""
    span = sum(widths[-_EMBEDDED_COLUMNS:]) + 2 * (_EMBEDDED_COLUMNS - 1)
    before = sum(widths[:-_EMBEDDED_COLUMNS]) + 2 * (len(widths) - _EMBEDDED_COLUMNS)
    return " " * before + f" {_EMBED_HEADING} ".center(span, "-")


def _money(amount: float) -> str:
    return f"{amount:,.2f}" if amount >= 1 or amount == 0 else f"{amount:.4f}"


def _notes(estimate: Estimate) -> list[str]:
    notes = []
    for table in estimate.tables:
        if table.sampled is not None:
            s = table.sampled
            notes.append(
                f"~ {table.table}: extrapolated from a sample of {s.rows:,} rows "
                f"(TABLESAMPLE {s.plan.method} {s.plan.percent:.4g}% of about "
                f"{s.plan.estimated_rows:,} rows the planner expects); --exact reads every row"
            )
        if table.sink == "absent":
            notes.append(f"{table.table}: no sink table yet, every row is embedded")
        elif table.sink == "rebuilt":
            notes.append(
                f"{table.table}: the sink table holds vectors of another type or size; a resync "
                "rebuilds it, every row is embedded"
            )
    notes.append(
        "content: rows with content; free rows: already in the sink with the same content hash "
        "and model (no API call); to embed: what the snapshot sends to the model"
    )
    notes.append(_assumptions(estimate))
    return notes


def _assumptions(estimate: Estimate) -> str:
    if estimate.provider == "local":
        requests = f"batches of {estimate.batch_size} chunks through the local model"
    else:
        requests = (
            f"requests of at most {estimate.batch_size} inputs and {MAX_BATCH_TOKENS:,} tokens"
        )
    price = (
        "cost unknown: set embedding.price_per_million_tokens"
        if estimate.price is None
        else f"cost at {estimate.price:g} per million tokens (embedding.price_per_million_tokens)"
    )
    return (
        f"{estimate.model} ({estimate.provider}): {requests}, for snapshot batches of "
        f"{estimate.batch_rows} rows; {price}"
    )


# -- I/O --------------------------------------------------------------------------------------


async def estimate(
    settings: Settings, table: str | None, sample_rows: int | None = DEFAULT_SAMPLE_ROWS
) -> Estimate:
    """Read the configured tables (or `table`) and the sink; `sample_rows` None reads every
    row of every table."""
    configs = selected_tables(settings, table)
    reader = Reader(settings, tokenizer_for(settings))
    try:
        tables = await _estimate_tables(settings, configs, reader, sample_rows)
    except psycopg.OperationalError as error:
        raise SourceUnavailable(f"cdc estimate lost its database connection: {error}") from None
    embedding = settings.embedding
    return Estimate(
        provider=embedding.provider,
        model=embedding.model,
        price=embedding.price_per_million_tokens,
        batch_rows=settings.snapshot.batch_rows,
        batch_size=embedding.batch_size,
        tables=tables,
    )


async def _estimate_tables(
    settings: Settings, configs: list[TableConfig], reader: Reader, sample_rows: int | None
) -> list[TableEstimate]:
    async with AsyncExitStack() as stack:
        source = await connect(settings.source.dsn, "source")
        stack.push_async_callback(source.close)
        sink = await connect(settings.sink_dsn, "sink")
        stack.push_async_callback(sink.close)
        for conn in (source, sink):
            await conn.set_read_only(True)
        tables = await describe_tables(source, configs)
        uses = {t.name: await _sink_use(settings, sink, t) for t in tables}
        reads = Sink(sink, settings).reads
        # One snapshot of the source for every table, as a snapshot reads them.
        await source.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        async with source.transaction():
            return [
                await reader.table(source, reads, table, uses[table.name], sample_rows)
                for table in tables
            ]


async def _sink_use(settings: Settings, sink: Conn, table: SourceTable) -> SinkUse:
    schema, name = settings.target_of(table.config)
    found = await vector_type_of(sink, schema, name)
    if found is None:
        return "absent"
    return "compared" if found == wanted_vector_type(settings) else "rebuilt"


class Reader:
    """Reads tables batch by batch and plans each as the applier would."""

    def __init__(self, settings: Settings, tokenizer: Tokenizer) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        # Checked here, before any connection: a chunk size over the model's limit is exit 2.
        self.rules: dict[str, ChunkRule] = chunk_rules(settings, tokenizer)

    async def table(
        self,
        source: Conn,
        sink: SinkReads,
        table: SourceTable,
        use: SinkUse,
        sample_rows: int | None,
    ) -> TableEstimate:
        plan = None
        if sample_rows is not None:
            plan = choose_sample(await table_size(source, table), sample_rows)
        clause = tablesample(plan.method, plan.percent, SAMPLE_SEED) if plan else None
        figures, rows_to_embed = Figures(), []
        batch_rows = self.settings.snapshot.batch_rows
        async for states in _states(source, table, batch_rows, clause):
            stored = await sink.stored_chunks(states) if use == "compared" else {}
            batch, embeds = self._batch(states, stored)
            figures += batch
            if plan is not None:
                rows_to_embed += embeds
        if plan is None:
            return TableEstimate(table.name, figures, use)
        return TableEstimate(
            table.name,
            self._extrapolated(figures, rows_to_embed, plan),
            use,
            Sampled(plan, figures.rows),
        )

    def _batch(
        self, states: list[RowState], stored: dict[SourceKey, dict[int, StoredChunk]]
    ) -> tuple[Figures, list[list[int]]]:
        plan = plan_writes(states, stored, self.settings.embedding.model, self.rules)
        works: list[ChunkWork] = [*plan.to_embed, *plan.metadata_only, *plan.kept]
        counts = chunk_tokens([work.chunk for work in works], self.tokenizer)
        tokens = {id(work): count for work, count in zip(works, counts, strict=True)}
        requests = request_count(self.settings, [tokens[id(w)] for w in plan.to_embed])
        return batch_figures(states, plan, tokens, requests), per_row_embeds(plan, tokens)

    def _extrapolated(
        self, sample: Figures, rows_to_embed: list[list[int]], plan: SamplePlan
    ) -> Figures:
        # Each sampled row stands for 100/percent rows, whatever the planner's estimate (which
        # may be stale): the sample's size is itself an estimate of the table's.
        scaled = sample.scaled(100.0 / plan.percent)
        requests = extrapolated_requests(
            rows_to_embed,
            sample.rows - len(rows_to_embed),
            scaled.rows,
            self.settings.snapshot.batch_rows,
            lambda counts: request_count(self.settings, counts),
        )
        return replace(scaled, requests=requests)


async def _states(
    conn: Conn, table: SourceTable, batch_rows: int, sample: sql.Composable | None
) -> AsyncIterator[list[RowState]]:
    """The table's rows (or the sample's) as row states, `batch_rows` at a time."""
    try:
        async for rows in stream_table(conn, table, batch_rows, sample):
            yield [row_state(table, row) for row in rows]
    except psycopg.errors.InsufficientPrivilege as error:
        raise SourceUnavailable(
            f"cannot read {table.name}: {error.diag.message_primary}; cdc estimate reads the "
            "configured tables as `cdc run` does (grant SELECT on them)",
            retriable=False,
        ) from None
