"""Which sink table each source table writes to, and grouping a batch by it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TypeVar

from psycopg import sql

from cdc.config import Settings

T = TypeVar("T")


class Targets:
    """source table -> (schema, table) of its sink table; a rebuild writes elsewhere."""

    def __init__(self, mapping: dict[str, tuple[str, str]]) -> None:
        self.mapping = mapping

    @classmethod
    def of(cls, settings: Settings) -> Targets:
        return cls({t.table: settings.target_of(t) for t in settings.tables})

    def of_table(self, source_table: str) -> sql.Identifier:
        return sql.Identifier(*self.mapping[source_table])

    def names(self, source_tables: Sequence[str]) -> list[tuple[str, str]]:
        """The (schema, table) each of `source_tables` writes to, each once."""
        return list(dict.fromkeys(self.mapping[t] for t in source_tables))

    def group(
        self, items: Sequence[T], table_of: Callable[[T], str]
    ) -> list[tuple[sql.Identifier, list[T]]]:
        """Group items by the sink table their source table writes to."""
        groups: dict[tuple[str, str], list[T]] = defaultdict(list)
        for item in items:
            groups[self.mapping[table_of(item)]].append(item)
        return [(sql.Identifier(*target), group) for target, group in groups.items()]
