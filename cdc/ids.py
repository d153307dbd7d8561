"""Source ids: how a row's primary key is spelled in the sink's `source_id`, and back.

A single key is its value as text; a composite key is a JSON array of its values as text,
e.g. `["en", "42"]`. Parsing is strict: an id no row of the table could have parses to None.
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def render_source_id(values: Sequence[str]) -> str:
    """The primary key as text; a composite key as a JSON array of its values as text."""
    if len(values) == 1:
        return values[0]
    return json.dumps(list(values), ensure_ascii=False)


def key_values(source_id: str, width: int) -> tuple[str, ...] | None:
    """The key values a sink source_id names, or None when no row of the table could have it.

    The inverse of `render_source_id`: a single key is the id itself; a composite key is a
    JSON array of its values as text.
    """
    if width == 1:
        return (source_id,)
    try:
        values = json.loads(source_id)
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) != width:
        return None
    if not all(isinstance(value, str) for value in values):
        return None
    return tuple(values)


def source_id_forms(source_id: str) -> list[str]:
    """The id as given and, when it is a JSON array of several values (a composite key), in
    the sink's own spelling: `["en",42]` finds `["en", "42"]`."""
    forms = [source_id]
    try:
        values = json.loads(source_id)
    except ValueError:
        return forms
    if (
        isinstance(values, list)
        and len(values) > 1
        and all(isinstance(v, str | int) and not isinstance(v, bool) for v in values)
    ):
        canonical = render_source_id([str(v) for v in values])
        if canonical != source_id:
            forms.append(canonical)
    return forms
