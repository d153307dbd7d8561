"""A local model's own tokenizer counts and cuts (cdc.embedding.model_tokens), with a small
BERT-like word-piece tokenizer built here and saved as a model directory would hold it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tokenizers", reason="the [local] extra is not installed")

import tokenizers

from cdc.config import settings_from
from cdc.content import ChunkRule, make_chunks
from cdc.embedding.factory import chunk_rules
from cdc.embedding.model_tokens import ModelEncoder, max_seq_length, token_starts
from cdc.embedding.tokens import Tokenizer
from cdc.errors import ConfigError

WORDS = ["the", "quick", "brown", "fox", "jump", "over", "lazy", "dog", "naive", "cafe", "."]
VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", *WORDS, "##s", "##ed", "##ing"]
TEXT = " ".join(f"The quick brown fox jumps over the lazy dog{i % 3 * '.'}" for i in range(40))


def bert_like(truncate_at: int | None = None) -> tokenizers.Tokenizer:
    """Lower-cases, strips accents, splits words into pieces, adds [CLS] and [SEP]."""
    models, normalizers = tokenizers.models, tokenizers.normalizers
    tokenizer = tokenizers.Tokenizer(
        models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]")
    )
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    if truncate_at is not None:  # as MiniLM's tokenizer.json ships: truncation at 128
        tokenizer.enable_truncation(truncate_at)
        tokenizer.enable_padding(length=truncate_at)
    return tokenizer


def model_dir(tmp_path: Path, limit: int | None = 32, subdir: str = "") -> Path:
    """A sentence-transformers model directory, without weights: enough to count."""
    module = tmp_path / subdir
    module.mkdir(parents=True, exist_ok=True)
    bert_like(truncate_at=8).save(str(module / "tokenizer.json"))
    if limit is not None:
        (module / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": limit}))
    modules = [
        {"idx": 0, "name": "0", "path": subdir, "type": "sentence_transformers.models.Transformer"}
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    return tmp_path


ENCODER = ModelEncoder(bert_like(), limit=32)
TOKENIZER = Tokenizer(ENCODER)


def pieces_of(text: str) -> int:
    """What the model reads: [CLS], the text's word pieces, [SEP]."""
    return len(bert_like().encode(text.strip()).ids)


def test_counts_are_word_pieces_with_the_special_tokens() -> None:
    assert ENCODER.added == 2
    # [CLS] the fox jump ##s jump ##ed [SEP]
    assert ENCODER.count(["the fox jumps jumped"]) == [8]
    texts = ["the quick fox", "", "naïve café", TEXT]
    assert ENCODER.count(texts) == [pieces_of(t) for t in texts]
    assert ENCODER.count([""]) == [2]


def test_windows_count_what_the_model_reads_and_cover_the_text() -> None:
    pieces = TOKENIZER.split(TEXT, 32)
    assert len(pieces) > 5
    assert "".join(p.text for p in pieces) == TEXT
    for piece in pieces:
        assert piece.tokens == pieces_of(piece.text) <= 32
    # Full windows: 30 word pieces of their own, with [CLS] and [SEP] the model's 32.
    assert all(p.tokens is not None and p.tokens >= 30 for p in pieces[:-1])


def test_short_text_is_one_counted_piece() -> None:
    [piece] = TOKENIZER.split("  the lazy dog  ", 32)
    assert (piece.text, piece.tokens) == ("  the lazy dog  ", 5)
    assert TOKENIZER.split("", 32) == []


def test_overlap_and_surrounding_whitespace_keep_the_windows_exact() -> None:
    text = "\n  " + TEXT + "  \n"
    pieces = TOKENIZER.split(text, 24, overlap=6)
    assert pieces[0].text.startswith("\n  The") and pieces[-1].text.endswith("  \n")
    for piece in pieces:
        assert piece.tokens == pieces_of(piece.text) <= 24
        assert piece.text in text


def test_a_token_starting_inside_the_previous_one_is_no_cut_point() -> None:
    # Byte-level tokenizers give each byte of one character the character's span.
    assert token_starts([(0, 3), (4, 5), (4, 5), (5, 9)], 9) == [0, 4, None, 5, 9]


def test_the_model_directory_gives_tokenizer_limit_and_no_truncation(tmp_path: Path) -> None:
    encoder = ModelEncoder.for_model(str(model_dir(tmp_path, subdir="0_Transformer")))
    assert encoder.limit == 32
    # tokenizer.json's own truncation (8) and padding are off: counting sees the whole text.
    assert encoder.count([TEXT]) == [pieces_of(TEXT)]
    assert pieces_of(TEXT) > 300


def test_max_seq_length_falls_back_as_sentence_transformers_does(tmp_path: Path) -> None:
    assert max_seq_length(tmp_path, {"max_seq_length": 128}) == 128
    assert max_seq_length(tmp_path, {}) is None
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 384}))
    assert max_seq_length(tmp_path, {}) == 384


def local_settings(directory: Path, **table: object) -> dict[str, object]:
    return {
        "source": {"dsn": "postgresql://cdc@127.0.0.1/app"},
        "embedding": {"provider": "local", "model": str(directory), "dimensions": 8},
        "tables": [{"table": "public.articles", "columns": ["body"], **table}],
    }


def test_provider_local_chunks_default_to_the_models_limit(tmp_path: Path) -> None:
    settings = settings_from(local_settings(model_dir(tmp_path)))
    [rule] = chunk_rules(settings).values()
    assert rule.size == 32
    assert isinstance(rule.tokenizer.encoder, ModelEncoder)
    chunks = make_chunks(TEXT, rule)
    assert all(c.tokens is not None and c.tokens <= 32 for c in chunks)
    assert chunks == make_chunks(TEXT, ChunkRule(TOKENIZER, 32))


def test_chunks_over_the_models_limit_are_refused_naming_the_key(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    over = settings_from(local_settings(directory, chunk_tokens=40))
    with pytest.raises(ConfigError, match=r"tables\.0\.chunk_tokens is 40.* at most 32 tokens"):
        chunk_rules(over)
    data = local_settings(directory)
    data["embedding"] = {**data["embedding"], "max_input_tokens": 64}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"embedding\.max_input_tokens is 64"):
        chunk_rules(settings_from(data))
    fine = settings_from(local_settings(directory, chunk_tokens=20, chunk_overlap=5))
    assert [r.size for r in chunk_rules(fine).values()] == [20]


def test_a_model_that_does_not_say_its_limit_needs_max_input_tokens(tmp_path: Path) -> None:
    settings = settings_from(local_settings(model_dir(tmp_path, limit=None)))
    with pytest.raises(ConfigError, match=r"does not say .* set embedding\.max_input_tokens"):
        chunk_rules(settings)


def test_a_directory_without_a_tokenizer_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"embedding\.model: the local model .* tokenizer"):
        ModelEncoder.for_model(str(tmp_path))
