"""The content rule: which text a row is embedded from, how it is hashed, split and identified.

Pure functions; interface.md is the contract they implement.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a row's content, as stored in one sink row."""

    number: int
    text: str
    hash: str


def render_content(values: Iterable[str | None]) -> str:
    """The configured columns in order, NULL and empty values skipped, joined by a blank line."""
    return SEPARATOR.join(filter(None, values))


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def render_source_id(key_values: Sequence[str]) -> str:
    """The primary key as text; a composite key as a JSON array of its values as text."""
    if len(key_values) == 1:
        return key_values[0]
    return json.dumps(list(key_values), ensure_ascii=False)


def split_content(text: str, max_chars: int) -> list[str]:
    """Split text longer than `max_chars` at the last paragraph, line or word break that fits.

    Text that fits is one chunk. An empty text has no chunks.
    """
    chunks: list[str] = []
    rest = text
    while len(rest) > max_chars:
        cut = _break_before(rest, max_chars)
        chunks.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        chunks.append(rest)
    return chunks


def _break_before(text: str, limit: int) -> int:
    # Prefer the largest natural boundary in the second half of the window, so chunks stay
    # reasonably full; fall back to a hard cut.
    for separator in (SEPARATOR, "\n", " "):
        position = text.rfind(separator, limit // 2, limit)
        if position > 0:
            return position + len(separator)
    return limit


def make_chunks(text: str, max_chars: int) -> list[Chunk]:
    return [
        Chunk(number, piece, content_hash(piece))
        for number, piece in enumerate(split_content(text, max_chars))
    ]
