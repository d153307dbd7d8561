"""The content rule: which text a row is embedded from, how it is hashed, split and identified.

Pure functions; interface.md is the contract they implement.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from string import Formatter

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
