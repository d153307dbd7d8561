"""`cdc status` and `cdc teardown`: what the slot and the sink look like, and removing the slot."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from cdc.config import Settings
from cdc.db import connect
from cdc.errors import CdcError
from cdc.replication.leadership import lock_holder
from cdc.replication.slots import SlotInfo, StandbyCopy, slot_info, standby_copy
from cdc.sink.fence import Term, latest_term
from cdc.sink.reads import vector_counts
from cdc.sink.schema import STATE_TABLE, SinkNames
from cdc.sink.state import SinkState, forget_slot, table_exists
from cdc.sink.store import Sink
from cdc.source.server import ServerFacts, assess, server_facts


async def collect_status(settings: Settings) -> dict[str, Any]:
    source = await connect(settings.source.dsn, "source")
    sink_conn = await connect(settings.sink_dsn, "sink")
    try:
        facts = await server_facts(source)
        slot = await slot_info(source, settings.source.slot)
        names = SinkNames.of(settings)
        set_up = await table_exists(sink_conn, names.state)
        sink = Sink(sink_conn, settings)
        state = await sink.state.load() if set_up else SinkState(None, False, None, None)
        vectors = await vector_counts(sink_conn, settings)
        has_dead = await table_exists(sink_conn, names.dead_letters)
        dead = await sink.reads.dead_letter_count() if has_dead else 0
        progress = await _progress(sink)
        holder = await lock_holder(source, settings.source.slot)
        term = await latest_term(sink_conn, names, settings.source.slot) if set_up else None
    finally:
        await source.close()
        await sink_conn.close()
    failover = await _failover(settings, slot)
    problems, next_step = _problems(settings, slot, set_up, state)
    problems += _server_problems(settings, facts) + _failover_problems(settings, failover)
    report: dict[str, Any] = {
        "server": facts.version_text,
        "plugin": settings.source.plugin,
        "slot": settings.source.slot,
        "set_up": set_up,
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
        "leader": _leader(holder, term),
        "problems": problems,
        "healthy": not problems,
    }
    if failover is not None:
        report["failover"] = failover
    if next_step is not None:
        report["next_step"] = next_step
    return report


def _leader(holder: str | None, term: Term | None) -> dict[str, Any]:
    """The instance streaming: the session holding the leader lock now, and the latest term
    the sink records (its instance's name and since when)."""
    return {
        "elected": holder is not None,
        "session": holder,
        "instance": term.leader if term else None,
        "since": term.since.isoformat() if term else None,
    }


def _problems(
    settings: Settings, slot: SlotInfo | None, set_up: bool, state: SinkState
) -> tuple[list[str], str | None]:
    """What is wrong, and the one command that moves a newcomer on, if there is one."""
    name = settings.source.slot
    if not set_up:
        return (
            [f"wal2vec is not set up on this database yet (no {STATE_TABLE} table)"],
            "run `cdc setup`, then `cdc run`",
        )
    if slot is None:
        if state.snapshot_done:
            return (
                [f"slot {name} does not exist (it was dropped after the snapshot)"],
                "run `cdc resync` to take the snapshot again on a new slot",
            )
        return (
            [f"slot {name} does not exist"],
            "run `cdc run`: it creates the slot and embeds the rows already there",
        )
    if slot.wal_status == "lost":
        lost = f"slot {name} is invalidated (wal_status lost): run `cdc resync`"
        return [lost], "run `cdc resync`"
    return [], None


async def _failover(settings: Settings, slot: SlotInfo | None) -> dict[str, Any] | None:
    """A failover slot's state on the primary and on the standby `source.dsn` names."""
    if not settings.source.failover and not (slot is not None and slot.failover):
        return None
    copy = await standby_copy(settings.source.dsn, settings.source.slot)
    return {
        "marked": bool(slot and slot.failover),
        "standby": copy.host if copy else None,
        "standby_synced": copy.synced if copy else None,
        "standby_confirmed_lsn": _lsn_text(copy),
        "standby_invalidation": copy.invalidation if copy else None,
        "standby_temporary": copy.temporary if copy else None,
        "ready": bool(slot and slot.failover and copy and copy.ready),
    }


def _lsn_text(copy: StandbyCopy | None) -> str | None:
    return str(copy.confirmed_flush) if copy and copy.confirmed_flush else None


def _failover_problems(settings: Settings, failover: dict[str, Any] | None) -> list[str]:
    if not settings.source.failover or failover is None or failover["ready"]:
        return []
    name = settings.source.slot
    if not failover["marked"]:
        return [f"slot {name} is not a failover slot yet: `cdc run` marks it when it starts"]
    if failover["standby"] is None:
        return [
            f"slot {name}: no standby answers through source.dsn, so its synchronised copy "
            "cannot be checked; name the standby there (host=primary,standby "
            "target_session_attrs=read-write)"
        ]
    return [
        f"slot {name} is not synchronised to the standby {failover['standby']} "
        f"(synced {failover['standby_synced']}, temporary {failover['standby_temporary']}, "
        f"invalidated {failover['standby_invalidation'] or 'no'}): a promotion now would lose "
        "it. A new slot's copy stays temporary until the standby passes its catalog horizon "
        "(moments, on a busy primary; `SELECT pg_log_standby_snapshot()` there helps). Check "
        "the standby's sync_replication_slots, hot_standby_feedback, primary_slot_name and "
        "the dbname in primary_conninfo (`cdc setup --print-sql` lists them)"
    ]


def _server_problems(settings: Settings, facts: ServerFacts) -> list[str]:
    """What on the server stops the stream (a warning elsewhere, but a problem here)."""
    return [f.message for f in assess(facts, settings.source) if f.level == "error" or f.stalls]


async def _progress(sink: Sink) -> list[dict[str, Any]]:
    """Each table's last snapshot or resync and how far it got (none before `cdc run`)."""
    try:
        return [p.as_dict() for p in await sink.progress.all()]
    except psycopg.errors.UndefinedTable:
        return []


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
    model = (
        f"{report['model']} ({report['dimensions']} dimensions)"
        if report["model"]
        else "(none yet: no vector written)"
    )
    lines = [
        f"server          PostgreSQL {report['server']}, plugin {report['plugin']}",
        f"slot            {report['slot']} " + _slot_words(report),
        f"server lsn      {_shown(report['server_lsn'])}",
        f"confirmed lsn   {_shown(report['confirmed_lsn'])}",
        f"lag             {_shown(report['lag_bytes'], ' bytes')}",
        f"retained wal    {_shown(report['retained_wal_bytes'], ' bytes')}",
        f"checkpoint      {_shown(report['checkpoint_lsn'])}",
        f"snapshot        {'done' if report['snapshot_done'] else 'not done'}",
        f"model           {model}",
        f"dead letters    {report['dead_letters']}",
        f"leader          {_leader_words(report['leader'])}",
    ]
    if "failover" in report:
        lines.append(f"failover        {_failover_words(report['failover'])}")
    lines.append("vectors (rows with vectors, per table):")
    lines += [f"  {table:<30} {count}" for table, count in report["vectors"].items()]
    if report["snapshots"]:
        lines.append("snapshots and resyncs (rows read / estimated):")
        lines += [_progress_words(p) for p in report["snapshots"]]
    lines += [f"PROBLEM: {problem}" for problem in report["problems"]]
    if report.get("next_step"):
        lines.append(f"NEXT: {report['next_step']}")
    return "\n".join(lines)


def _leader_words(leader: dict[str, Any]) -> str:
    if not leader["elected"]:
        last = leader["instance"] and f" (last: {leader['instance']}, since {leader['since']})"
        return "none: no `cdc run` leads the slot" + (last or "")
    return f"{leader['instance']} since {leader['since']}"


def _failover_words(failover: dict[str, Any]) -> str:
    if not failover["marked"]:
        return "not marked"
    if failover["standby"] is None:
        return "marked; no standby reachable through source.dsn"
    state = "synced" if failover["ready"] else "NOT synced"
    return (
        f"marked; {state} on {failover['standby']} "
        f"(confirmed {_shown(failover['standby_confirmed_lsn'])})"
    )


def _shown(value: object, unit: str = "") -> str:
    """A value for the text report: "-" when there is none (no slot, nothing streamed yet)."""
    return "-" if value is None else f"{value}{unit}"


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
        await forget_slot(sink, settings)
    finally:
        await sink.close()
