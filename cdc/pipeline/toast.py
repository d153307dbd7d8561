"""Unchanged-TOAST values: the one place a `u` placeholder is replaced by the real value.

An update that leaves a TOASTed column alone sends a placeholder (`UNCHANGED_TOAST`) instead of
its value, and a placeholder must never be embedded (invariant 4). It is filled from the row's
previous change while the buffer still holds it (`fill_from_previous`, pure), else from the
source when the batch is applied (`ToastResolver`, which also turns changes into `RowState`s).
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc.db import Conn
from cdc.replication.changes import RowChange
from cdc.replication.messages import UNCHANGED_TOAST, Value
from cdc.rows import RowState
from cdc.source.reads import SourceTable, fetch_rows

# (table, key values) -> the row's current content and metadata values, as the source has them.
Current = dict[tuple[str, tuple[str, ...]], tuple[str | None, ...]]


def fill(values: Sequence[Value], current: Sequence[Value]) -> tuple[Value, ...]:
    """`values` with each placeholder replaced by the value at the same place in `current`."""
    return tuple(c if v is UNCHANGED_TOAST else v for v, c in zip(values, current, strict=True))


def fill_from_previous(change: RowChange, previous: RowChange) -> None:
    """Take unchanged-TOAST values from the row's previous state when the buffer still has it."""
    change.content = _merge(change.content, previous.content)
    change.metadata = _merge(change.metadata, previous.metadata)


def _merge(
    new: tuple[Value, ...] | None, old: tuple[Value, ...] | None
) -> tuple[Value, ...] | None:
    if new is None or old is None or UNCHANGED_TOAST not in new:
        return new
    return fill(new, old)


class ToastResolver:
    """Turns a batch's changes into row states, reading placeholders' values from the source."""

    def __init__(self, source: Conn, tables: dict[str, SourceTable]) -> None:
        self._source = source
        self._tables = tables

    async def row_states(self, changes: Sequence[RowChange]) -> list[RowState]:
        current = await self._fetch_unchanged(changes)
        states = []
        for change in changes:
            state = self._row_state(change, current)
            if state is not None:
                states.append(state)
        return states

    async def _fetch_unchanged(self, changes: Sequence[RowChange]) -> Current:
        """Current values of rows the stream sent with unchanged-TOAST placeholders."""
        wanted: dict[str, list[tuple[str, ...]]] = {}
        for change in changes:
            if not change.is_delete and change.has_unchanged_toast():
                wanted.setdefault(change.table, []).append(change.key)
        found: Current = {}
        for table, keys in wanted.items():
            rows = await fetch_rows(self._source, self._tables[table], keys)
            found.update({(table, key): values for key, values in rows.items()})
        return found

    def _row_state(self, change: RowChange, current: Current) -> RowState | None:
        lsn = change.commit_lsn
        if change.is_delete:
            return RowState(change.table, change.source_id, "", {}, lsn, deleted=True)
        config = self._tables[change.table].config
        content, metadata = change.content or (), change.metadata or ()
        if change.has_unchanged_toast():
            fetched = current.get((change.table, change.key))
            if fetched is None:
                return None  # gone since; its delete is on the way
            width = len(config.content_columns)
            content = fill(content, fetched[:width])
            metadata = fill(metadata, fetched[width:])
        # No placeholder is left here: each was filled from the buffer or the source.
        return RowState(
            change.table,
            change.source_id,
            config.content.render(content),  # type: ignore[arg-type]
            dict(zip(config.metadata, metadata, strict=True)),
            lsn,
        )
