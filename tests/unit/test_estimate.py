"""`cdc estimate`'s pure parts: when to sample, a batch's figures from the applier's plan,
requests for rows extrapolated from a sample, prices, and the text it prints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cdc.apply.plan import plan_writes
from cdc.commands.estimate import (
    Estimate,
    Figures,
    Sampled,
    SamplePlan,
    TableEstimate,
    batch_figures,
    choose_sample,
    extrapolated_requests,
    per_row_embeds,
    render_estimate,
)
from cdc.config import load_config
from cdc.content import ChunkRule, chunk_tokens, content_hash, make_chunks
from cdc.embedding.providers import plan_requests
from cdc.embedding.tokens import Tokenizer
from cdc.rows import RowState, StoredChunk
from cdc.source.estimates import TableSize

TOKENIZER = Tokenizer.for_model("text-embedding-3-small")
RULES = {"public.a": ChunkRule(TOKENIZER, size=16)}
LONG = " ".join(f"word{i}" for i in range(40))  # several chunks of 16 tokens


def row(source_id: str, content: str) -> RowState:
    return RowState("public.a", source_id, content, {}, lsn=None)


def test_small_tables_are_read_whole_large_ones_sampled_by_pages_or_rows() -> None:
    assert choose_sample(TableSize(rows=10_000, pages=500), 10_000) is None
    by_rows = choose_sample(TableSize(rows=40_000, pages=300), 10_000)
    assert by_rows == SamplePlan("BERNOULLI", 25.0, 40_000)  # 75 pages: too few for SYSTEM
    by_pages = choose_sample(TableSize(rows=1_000_000, pages=20_000), 10_000)
    assert by_pages == SamplePlan("SYSTEM", 1.0, 1_000_000)  # 200 pages of the 20,000


def test_a_batchs_figures_come_from_the_applier_plan() -> None:
    held = make_chunks(LONG, RULES["public.a"])
    stored = {
        ("public.a", "1"): {c.number: StoredChunk(c.hash, "m", True) for c in held},
        ("public.a", "2"): {0: StoredChunk(content_hash("old"), "m", True)},
    }
    rows = [row("1", LONG), row("2", "new text"), row("3", ""), row("4", LONG)]
    plan = plan_writes(rows, stored, "m", RULES)
    works = [*plan.to_embed, *plan.metadata_only, *plan.kept]
    counts = chunk_tokens([w.chunk for w in works], TOKENIZER)
    tokens = {id(w): n for w, n in zip(works, counts, strict=True)}
    figures = batch_figures(rows, plan, tokens, requests=1)
    long_tokens, long_chunks = sum(c.tokens or 0 for c in held), len(held)
    assert long_chunks > 2
    assert figures == Figures(
        rows=4,
        rows_with_content=3,
        chunks=2 * long_chunks + 1,
        tokens=2 * long_tokens + 2,
        free_rows=1,
        free_chunks=long_chunks,
        embed_chunks=long_chunks + 1,
        embed_tokens=long_tokens + 2,
        requests=1,
    )
    assert per_row_embeds(plan, tokens) == [[2], [c.tokens for c in held]]


def test_figures_add_up_and_scale() -> None:
    one = Figures(rows=10, chunks=12, tokens=1000, requests=1)
    assert one + one == Figures(rows=20, chunks=24, tokens=2000, requests=2)
    assert one.scaled(2.5) == Figures(rows=25, chunks=30, tokens=2500, requests=2)


def openai_planner(batch_size: int) -> Callable[[list[int]], int]:
    return lambda counts: len(plan_requests(counts, batch_size, 300_000))


def test_requests_of_extrapolated_rows_are_planned_per_batch() -> None:
    # 1 chunk a row, batches of 100 rows, requests of up to 30 chunks: 4 a full batch.
    sampled = [[10]] * 50
    assert extrapolated_requests(sampled, 0, 1000, 100, openai_planner(30)) == 40
    # 1050 rows: 10 full batches and one of 50 rows (2 requests).
    assert extrapolated_requests(sampled, 0, 1050, 100, openai_planner(30)) == 42
    # Half the sampled rows free: 50 chunks a batch, 2 requests.
    assert extrapolated_requests(sampled, 50, 2000, 100, openai_planner(30)) == 40
    # Nothing to embed: no request.
    assert extrapolated_requests([], 50, 2000, 100, openai_planner(30)) == 0
    # Token limits count too: 3 rows of 150,000 tokens a batch of 3 rows is 2 requests.
    assert extrapolated_requests([[150_000]], 0, 30, 3, openai_planner(2048)) == 20


def estimate_of(price: float | None, sampled: bool) -> Estimate:
    figures = Figures(1234, 1200, 1500, 300_000, 200, 210, 1290, 258_000, 3)
    sample = Sampled(SamplePlan("SYSTEM", 1.0, 123_400), 1234) if sampled else None
    return Estimate(
        provider="openai",
        model="text-embedding-3-small",
        price=price,
        batch_rows=2000,
        batch_size=2048,
        tables=[
            TableEstimate("public.articles", figures, "compared", sample),
            TableEstimate("public.faqs", Figures(5, 5, 5, 40, 0, 0, 5, 40, 1), "absent"),
        ],
    )


def test_the_text_is_a_small_table_marked_where_extrapolated() -> None:
    text = render_estimate(estimate_of(0.02, sampled=True))
    lines = text.splitlines()
    assert "to embed" in lines[0] and len(lines[0]) == len(lines[1])
    assert lines[2].split() == [
        "public.articles", "~1,234", "~1,200", "~1,500", "~300,000", "~200", "~1,290",
        "~258,000", "~3", "~0.0052",
    ]  # fmt: skip
    assert lines[3].split() == ["public.faqs", "5", "5", "5", "40", "0", "5", "40", "1", "0.0000"]
    assert lines[4].split()[:2] == ["total", "~1,239"]
    assert "extrapolated from a sample of 1,234 rows (TABLESAMPLE SYSTEM 1% of about" in text
    assert "public.faqs: no sink table yet, every row is embedded" in text
    assert all(len(line) <= 100 for line in lines[5:])


def test_an_unknown_price_shows_as_unknown() -> None:
    estimate = estimate_of(None, sampled=False)
    text = render_estimate(estimate)
    assert text.splitlines()[2].split()[-1] == "?"
    assert "cost unknown: set embedding.price_per_million_tokens" in text
    assert estimate.as_dict()["total"]["cost"] is None
    assert estimate.as_dict()["tables"]["public.faqs"]["sample"] is None


BASE = """
source:
  dsn: postgresql://cdc@db:5432/app
tables:
  - table: public.articles
    columns: [title, body]
"""


@pytest.mark.parametrize(
    ("embedding", "price"),
    [
        ("", 0.02),
        ("  model: text-embedding-3-large\n  dimensions: 1024\n", 0.13),
        ("  model: text-embedding-ada-002\n", 0.10),
        ("  model: BAAI/bge-small-en-v1.5\n  dimensions: 384\n", None),
        ("  model: BAAI/bge-small-en-v1.5\n  price_per_million_tokens: 0.005\n", 0.005),
        ("  provider: local\n", 0.0),
        ("  price_per_million_tokens: null\n", 0.02),
    ],
)
def test_price_per_million_tokens_defaults_by_model(
    tmp_path: Path, embedding: str, price: float | None
) -> None:
    path = tmp_path / "wal2vec.yaml"
    path.write_text(BASE + "embedding:\n" + embedding if embedding else BASE)
    assert load_config(path, {}).embedding.price_per_million_tokens == price
