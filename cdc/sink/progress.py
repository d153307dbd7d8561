"""Where snapshots and resyncs stand, per table, kept in the sink's `cdc_snapshots` table.

The initial snapshot records rows read per table; a per-table resync records its position (the
primary key of the last row read, then the last sink id swept for orphans), committed in the
same sink transaction as the vectors it covers, so a resync killed mid-way resumes where its
work last landed. `cdc resync --table` writes a pending row here; the running streamer polls
for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import sql

from cdc.db import Conn
from cdc.sink.schema import SinkNames

Kind = Literal["snapshot", "resync"]
Status = Literal["pending", "running", "done"]
Phase = Literal["rows", "orphans"]


@dataclass(frozen=True, slots=True)
class TableProgress:
    source_table: str
    kind: Kind
    status: Status
    phase: Phase
    last_key: tuple[str, ...] | None
    last_source_id: str | None
    rows_done: int
    rows_estimated: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.source_table,
            "kind": self.kind,
            "status": self.status,
            "phase": self.phase,
            "rows_done": self.rows_done,
            "rows_estimated": self.rows_estimated,
        }


@dataclass(frozen=True, slots=True)
class ResyncPosition:
    """Where a per-table resync got to: saved with the sink write that covers it."""

    source_table: str
    phase: Phase
    last_key: tuple[str, ...] | None
    last_source_id: str | None
    rows_read: int
    finished: bool = False


_COLUMNS = "source_table, kind, status, phase, last_key, last_source_id, rows_done, rows_estimated"


class ProgressStore:
    def __init__(self, conn: Conn, names: SinkNames, slot: str) -> None:
        self._conn = conn
        self._table = names.snapshots
        self._slot = slot

    async def all(self) -> list[TableProgress]:
        query = sql.SQL("SELECT " + _COLUMNS + " FROM {} WHERE slot = %s ORDER BY 1").format(
            self._table
        )
        cursor = await self._conn.execute(query, (self._slot,))
        return [_progress(row) for row in await cursor.fetchall()]

    async def open_resyncs(self) -> list[TableProgress]:
        """Per-table resyncs requested or under way, oldest request first."""
        query = sql.SQL(
            "SELECT " + _COLUMNS + " FROM {} WHERE slot = %s AND kind = 'resync' "
            "AND status <> 'done' ORDER BY requested_at"
        ).format(self._table)
        cursor = await self._conn.execute(query, (self._slot,))
        return [_progress(row) for row in await cursor.fetchall()]

    async def request_resync(self, tables: Sequence[str]) -> None:
        """Ask for a per-table resync; one already running starts over from the beginning."""
        query = sql.SQL(
            "INSERT INTO {} (slot, source_table, kind, status) "
            "VALUES (%s, %s, 'resync', 'pending') "
            "ON CONFLICT (slot, source_table) DO UPDATE SET kind = 'resync', status = 'pending', "
            "phase = 'rows', last_key = NULL, last_source_id = NULL, rows_done = 0, "
            "requested_at = now(), started_at = NULL, finished_at = NULL, updated_at = now()"
        ).format(self._table)
        async with self._conn.transaction():
            for table in tables:
                await self._conn.execute(query, (self._slot, table))

    async def begin_snapshot(self, estimates: dict[str, int]) -> None:
        """The initial (or a full) snapshot starts: every table from zero."""
        query = sql.SQL(
            "INSERT INTO {} (slot, source_table, kind, status, rows_estimated, started_at) "
            "VALUES (%s, %s, 'snapshot', 'running', %s, now()) "
            "ON CONFLICT (slot, source_table) DO UPDATE SET kind = 'snapshot', "
            "status = 'running', phase = 'rows', last_key = NULL, last_source_id = NULL, "
            "rows_done = 0, rows_estimated = EXCLUDED.rows_estimated, requested_at = now(), "
            "started_at = now(), finished_at = NULL, updated_at = now()"
        ).format(self._table)
        async with self._conn.transaction():
            for table, estimate in estimates.items():
                await self._conn.execute(query, (self._slot, table, estimate))

    async def snapshot_read(self, table: str, rows_done: int) -> None:
        query = sql.SQL(
            "UPDATE {} SET rows_done = %s, updated_at = now() WHERE slot = %s AND source_table = %s"
        ).format(self._table)
        await self._conn.execute(query, (rows_done, self._slot, table))

    async def finish_snapshot(self, tables: Sequence[str]) -> None:
        query = sql.SQL(
            "UPDATE {} SET status = 'done', finished_at = now(), updated_at = now() "
            "WHERE slot = %s AND source_table = ANY(%s)"
        ).format(self._table)
        await self._conn.execute(query, (self._slot, list(tables)))

    async def start_resync(self, table: str, estimate: int | None) -> None:
        query = sql.SQL(
            "UPDATE {} SET status = 'running', rows_estimated = %s, "
            "started_at = coalesce(started_at, now()), updated_at = now() "
            "WHERE slot = %s AND source_table = %s"
        ).format(self._table)
        await self._conn.execute(query, (estimate, self._slot, table))

    async def save_positions(self, positions: Sequence[ResyncPosition]) -> None:
        """Record resync positions; call inside the sink transaction that covers them."""
        query = sql.SQL(
            "UPDATE {} SET phase = %s, last_key = %s, last_source_id = %s, "
            "rows_done = rows_done + %s, updated_at = now(), "
            "status = CASE WHEN %s THEN 'done' ELSE status END, "
            "finished_at = CASE WHEN %s THEN now() ELSE finished_at END "
            "WHERE slot = %s AND source_table = %s AND kind = 'resync'"
        ).format(self._table)
        for p in positions:
            await self._conn.execute(
                query,
                (
                    p.phase,
                    list(p.last_key) if p.last_key is not None else None,
                    p.last_source_id,
                    p.rows_read,
                    p.finished,
                    p.finished,
                    self._slot,
                    p.source_table,
                ),
            )

    async def forget(self) -> None:
        query = sql.SQL("DELETE FROM {} WHERE slot = %s").format(self._table)
        await self._conn.execute(query, (self._slot,))


def _progress(row: Sequence[Any]) -> TableProgress:
    return TableProgress(
        source_table=row[0],
        kind=row[1],
        status=row[2],
        phase=row[3],
        last_key=tuple(row[4]) if row[4] is not None else None,
        last_source_id=row[5],
        rows_done=int(row[6]),
        rows_estimated=None if row[7] is None else int(row[7]),
    )
