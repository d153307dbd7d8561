"""`cdc status` and `cdc teardown`: what the slot and the sink look like, and removing the slot."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from cdc.config import Settings
from cdc.errors import CdcError
from cdc.provision import connect
from cdc.schema import SinkNames
from cdc.sink import Sink
from cdc.slots import slot_info


async def collect_status(settings: Settings) -> dict[str, Any]:
    source = await connect(settings.source.dsn, "source")
    sink_conn = await connect(settings.sink_dsn, "sink")
    try:
        slot = await slot_info(source, settings.source.slot)
        sink = Sink(sink_conn, settings)
        state = await sink.load_state()
        vectors = await _vector_counts(sink_conn, settings)
        dead = await sink.dead_letter_count()
        progress = await _progress(sink)
    finally:
        await source.close()
        await sink_conn.close()
    problems = []
    if slot is None:
        problems.append(f"slot {settings.source.slot} does not exist")
    elif slot.wal_status == "lost":
        problems.append(
            f"slot {settings.source.slot} is invalidated (wal_status lost): run `cdc resync`"
        )
    return {
        "slot": settings.source.slot,
        "slot_exists": slot is not None,
        "slot_active": slot.active if slot else False,
        "wal_status": slot.wal_status if slot else None,
        "server_lsn": str(slot.server_lsn) if slot else None,
        "confirmed_lsn": str(slot.confirmed_flush) if slot and slot.confirmed_flush else None,
        "lag_bytes": slot.lag_bytes if slot else None,
        "retained_wal_bytes": slot.retained_wal_bytes if slot else None,
        "checkpoint_lsn": str(state.checkpoint) if state.checkpoint else None,
        "snapshot_done": state.snapshot_done,
        "model": state.model,
        "dimensions": state.dimensions,
        "vectors": vectors,
        "dead_letters": dead,
        "snapshots": progress,
        "problems": problems,
        "healthy": not problems,
    }


async def _progress(sink: Sink) -> list[dict[str, Any]]:
    """Each table's last snapshot or resync and how far it got (none before `cdc run`)."""
    try:
        return [p.as_dict() for p in await sink.progress.all()]
    except psycopg.errors.UndefinedTable:
        return []


async def _vector_counts(conn: Any, settings: Settings) -> dict[str, int]:
    counts = {t.table: 0 for t in settings.tables}
    for schema, table in settings.sink_tables():
        exists = await (
            await conn.execute(
                "SELECT to_regclass(%s)", (sql.Identifier(schema, table).as_string(conn),)
            )
        ).fetchone()
        if not exists or exists[0] is None:
            continue
        query = sql.SQL(
            "SELECT source_table, count(DISTINCT source_id) FROM {} GROUP BY source_table"
        ).format(sql.Identifier(schema, table))
        for source_table, count in await (await conn.execute(query)).fetchall():
            if source_table in counts:
                counts[source_table] = int(count)
    return counts


def _slot_words(report: dict[str, Any]) -> str:
    if not report["slot_exists"]:
        return "(missing)"
    activity = "active" if report["slot_active"] else "inactive"
    return f"({activity}, wal_status {report['wal_status']})"


def _progress_words(p: dict[str, Any]) -> str:
    estimate = p["rows_estimated"]
    share = (
        f" ({100 * p['rows_done'] / estimate:.0f}%)" if estimate and p["status"] != "done" else ""
    )
    where = f", {p['phase']}" if p["status"] == "running" and p["kind"] == "resync" else ""
    return (
        f"  {p['table']:<30} {p['kind']} {p['status']}{where}: "
        f"{p['rows_done']} / {estimate if estimate is not None else '?'}{share}"
    )


def render_status(report: dict[str, Any]) -> str:
    lines = [
        f"slot            {report['slot']} " + _slot_words(report),
        f"server lsn      {report['server_lsn']}",
        f"confirmed lsn   {report['confirmed_lsn']}",
        f"lag             {report['lag_bytes']} bytes",
        f"retained wal    {report['retained_wal_bytes']} bytes",
        f"checkpoint      {report['checkpoint_lsn']}",
        f"snapshot        {'done' if report['snapshot_done'] else 'not done'}",
        f"model           {report['model']} ({report['dimensions']} dimensions)",
        f"dead letters    {report['dead_letters']}",
        "vectors (rows with vectors, per table):",
    ]
    lines += [f"  {table:<30} {count}" for table, count in report["vectors"].items()]
    if report["snapshots"]:
        lines.append("snapshots and resyncs (rows read / estimated):")
        lines += [_progress_words(p) for p in report["snapshots"]]
    lines += [f"PROBLEM: {problem}" for problem in report["problems"]]
    return "\n".join(lines)


async def teardown(settings: Settings, drop_publication: bool) -> list[str]:
    """Drop the slot (and optionally the publication); vectors are never dropped."""
    said = []
    source = await connect(settings.source.dsn, "source")
    try:
        slot = await slot_info(source, settings.source.slot)
        if slot is not None and slot.active:
            raise CdcError(
                f"slot {settings.source.slot} is in use by a running `cdc run`: stop it first, "
                "then run teardown again"
            )
        if slot is not None:
            await source.execute("SELECT pg_drop_replication_slot(%s)", (settings.source.slot,))
            said.append(f"dropped slot {settings.source.slot}")
        else:
            said.append(f"slot {settings.source.slot} did not exist")
        if drop_publication:
            await source.execute(
                sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                    sql.Identifier(settings.source.publication)
                )
            )
            said.append(f"dropped publication {settings.source.publication}")
    finally:
        await source.close()
    await _reset_state(settings)
    said.append(
        "vectors kept; the next `cdc run` takes a new snapshot "
        "(content that did not change is not embedded again)"
    )
    return said


async def _reset_state(settings: Settings) -> None:
    sink = await connect(settings.sink_dsn, "sink")
    try:
        names = SinkNames.of(settings)
        # The slot's state and its snapshot records: the next start begins afresh.
        for table in (names.state, names.snapshots):
            exists = await (
                await sink.execute("SELECT to_regclass(%s)", (table.as_string(sink),))
            ).fetchone()
            if exists and exists[0] is not None:
                await sink.execute(
                    sql.SQL("DELETE FROM {} WHERE slot = %s").format(table),
                    (settings.source.slot,),
                )
    finally:
        await sink.close()
