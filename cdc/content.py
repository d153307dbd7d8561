"""The content rule: which text a row is embedded from, how it is hashed, split and identified.

Pure functions; interface.md is the contract they implement. Splitting counts tokens with the
model's tokenizer (`cdc.embedding.tokens`): content over a table's chunk size becomes token windows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from string import Formatter

from cdc.embedding.tokens import Tokenizer

SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a row's content, as stored in one sink row."""

    number: int
    text: str
    hash: str
    # The model's token count for `text`, when chunking had to count (None: not counted yet).
    tokens: int | None = field(default=None, compare=False)


def render_content(values: Iterable[str | None]) -> str:
    """The configured columns in order, NULL and empty values skipped, joined by a blank line."""
    return SEPARATOR.join(filter(None, values))


# A template's parts: literal text, then the position (in `ContentRule.columns`) of the column
# whose value follows it, or None after the last literal.
TemplatePart = tuple[str, int | None]


@dataclass(frozen=True, slots=True)
class ContentRule:
    """How one table's row becomes the text that is embedded.

    Either its `columns` joined by a blank line (NULL and empty values skipped), or a template:
    a format string whose `{column}` placeholders name the columns (NULL renders as empty).
    A row whose content columns are all NULL or empty has no content, whichever the rule, so
    a template's literal text alone is never embedded.
    """

    columns: tuple[str, ...]
    template: tuple[TemplatePart, ...] | None = None

    @classmethod
    def joined(cls, columns: Sequence[str]) -> ContentRule:
        return cls(tuple(columns))

    @classmethod
    def from_template(cls, template: str) -> ContentRule:
        """Parse `template`; `ValueError` says what is wrong with it."""
        columns: dict[str, int] = {}
        parts: list[TemplatePart] = []
        for literal, name, spec, conversion in _parse(template):
            if name is None:
                parts.append((literal, None))
                continue
            if not name or not _plain_name(name):
                raise ValueError(
                    f"template placeholder {{{name}}} must name a column, e.g. {{title}}; "
                    "write {{ and }} for literal braces"
                )
            if spec or conversion:
                raise ValueError(
                    f"template placeholder {{{name}}} takes no conversion or format spec; "
                    "write just {column}"
                )
            parts.append((literal, columns.setdefault(name, len(columns))))
        if not columns:
            raise ValueError("template names no column; use {column} placeholders")
        return cls(tuple(columns), tuple(parts))

    def render(self, values: Sequence[str | None]) -> str:
        """The content of a row whose content column values (in `columns` order) are `values`."""
        if self.template is None:
            return render_content(values)
        if not any(values):
            return ""
        return "".join(
            literal if index is None else literal + (values[index] or "")
            for literal, index in self.template
        )


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(Formatter().parse(template))
    except ValueError as error:
        raise ValueError(
            f"template is not a valid format string ({error}); "
            "write {{ and }} for literal braces"
        ) from None


def _plain_name(name: str) -> bool:
    # Column names may hold spaces or dashes; attribute and index access may not be asked for.
    return not any(character in name for character in ".[]{}")


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChunkRule:
    """How one table's content is cut: windows of `size` tokens sharing `overlap` tokens."""

    tokenizer: Tokenizer
    size: int
    overlap: int = 0


def make_chunks(text: str, rule: ChunkRule) -> list[Chunk]:
    """The row's chunks: the whole text when it fits in `rule.size` tokens, else token windows."""
    return [
        Chunk(number, piece.text, content_hash(piece.text), piece.tokens)
        for number, piece in enumerate(rule.tokenizer.split(text, rule.size, rule.overlap))
    ]


def chunk_tokens(chunks: Sequence[Chunk], tokenizer: Tokenizer, *, exact: bool = True) -> list[int]:
    """Each chunk's token count: the one chunking counted, else counted here, all at once (so
    no text is tokenized twice). Not `exact`: where the tokenizer has a cheap upper bound,
    that bound instead of a count (enough to keep requests under a token limit)."""
    uncounted = [i for i, chunk in enumerate(chunks) if chunk.tokens is None]
    counts = [chunk.tokens or 0 for chunk in chunks]
    if uncounted:
        texts = [chunks[i].text for i in uncounted]
        fresh = (None if exact else tokenizer.ceilings(texts)) or tokenizer.count(texts)
        for index, count in zip(uncounted, fresh, strict=True):
            counts[index] = count
    return counts
