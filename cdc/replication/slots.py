"""The replication slot as the server sees it, and the rules for when it may be used."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.conninfo import make_conninfo

from cdc.db import Conn, connect
from cdc.dsn import dsn_hosts
from cdc.errors import SlotLost, SourceUnavailable
from cdc.replication.lsn import Lsn


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    active: bool
    wal_status: str | None
    confirmed_flush: Lsn | None
    restart_lsn: Lsn | None
    server_lsn: Lsn
    # Marked to be synchronised to standbys (PostgreSQL 17+; None on older servers).
    failover: bool | None = None

    @property
    def lag_bytes(self) -> int | None:
        """Server WAL position minus the confirmed flush LSN."""
        return None if self.confirmed_flush is None else self.server_lsn - self.confirmed_flush

    @property
    def retained_wal_bytes(self) -> int | None:
        """WAL the server keeps for this slot: its position minus the slot's restart_lsn."""
        return None if self.restart_lsn is None else self.server_lsn - self.restart_lsn


# `failover` through jsonb: the column exists from PostgreSQL 17 on, and the query must run on
# older servers too.
_SLOT_QUERY = """
SELECT active, wal_status, confirmed_flush_lsn::text, restart_lsn::text,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END)::text,
       (to_jsonb(s) ->> 'failover')::bool
FROM pg_replication_slots AS s WHERE slot_name = %s
"""


async def slot_info(conn: Conn, name: str) -> SlotInfo | None:
    row = await (await conn.execute(_SLOT_QUERY, (name,))).fetchone()
    if row is None:
        return None
    return SlotInfo(
        name=name,
        active=bool(row[0]),
        wal_status=row[1],
        confirmed_flush=Lsn.parse(row[2]) if row[2] else None,
        restart_lsn=Lsn.parse(row[3]) if row[3] else None,
        server_lsn=Lsn.parse(row[4]),
        failover=row[5],
    )


# The slot monitor's poll: also the server's `max_slot_wal_keep_size`, and one row even when
# the slot does not exist.
_SAMPLE_QUERY = """
SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END)::text,
       (SELECT CASE WHEN setting::bigint < 0 THEN -1 ELSE pg_size_bytes(setting || unit) END
          FROM pg_settings WHERE name = 'max_slot_wal_keep_size'),
       s.slot_name IS NOT NULL, s.active, s.wal_status,
       s.confirmed_flush_lsn::text, s.restart_lsn::text, (to_jsonb(s) ->> 'failover')::bool
FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots AS s ON s.slot_name = %s
"""


@dataclass(frozen=True, slots=True)
class SlotSample:
    """One poll's answer. Slot fields are None when the slot does not exist."""

    server_lsn: Lsn
    max_wal_keep_bytes: int  # -1: unlimited
    exists: bool
    active: bool
    wal_status: str | None
    confirmed_flush: Lsn | None
    restart_lsn: Lsn | None
    failover: bool = False


async def poll_slot(conn: Conn, slot: str) -> SlotSample:
    """What the slot monitor polls: the server's position and the slot's state and limits."""
    row = await (await conn.execute(_SAMPLE_QUERY, (slot,))).fetchone()
    assert row is not None  # the LEFT JOIN from one row always yields one
    server, keep, exists, active, wal_status, confirmed, restart, failover = row
    return SlotSample(
        server_lsn=Lsn.parse(server),
        max_wal_keep_bytes=int(keep) if keep is not None else -1,
        exists=bool(exists),
        active=bool(active),
        wal_status=wal_status,
        confirmed_flush=Lsn.parse(confirmed) if confirmed else None,
        restart_lsn=Lsn.parse(restart) if restart else None,
        failover=bool(failover),
    )


def check_slot_usable(slot: SlotInfo | None, snapshot_done: bool, name: str) -> None:
    """Refuse a slot that lost WAL, and refuse to restart silently from nowhere."""
    if slot is not None and slot.wal_status == "lost":
        raise SlotLost(
            f"replication slot {name} is invalidated (wal_status = lost): the server removed WAL "
            "it still needed, so changes were missed. Run `cdc resync` to rebuild from a new slot"
        )
    if slot is None and snapshot_done:
        raise SlotLost(
            f"replication slot {name} does not exist, but the sink was built from it: changes "
            "since it went may be missing. Run `cdc resync` to rebuild from a new slot"
        )


@dataclass(frozen=True, slots=True)
class StandbyCopy:
    """The slot as a standby holds it: a failover slot is synchronised there (PostgreSQL 17+)."""

    host: str
    exists: bool
    synced: bool
    confirmed_flush: Lsn | None
    # Why the copy can no longer be used (`invalidation_reason`), or None.
    invalidation: str | None
    # A copy still waiting for the standby to pass the slot's catalog horizon: a promotion
    # drops it.
    temporary: bool = False

    @property
    def ready(self) -> bool:
        """A promotion of this standby would find the slot there, usable."""
        return self.exists and self.synced and not self.temporary and self.invalidation is None


_STANDBY_QUERY = """
SELECT s.synced, s.confirmed_flush_lsn::text, s.invalidation_reason, s.temporary
FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots AS s ON s.slot_name = %s
"""


async def standby_copy(dsn: str, slot: str) -> StandbyCopy | None:
    """The slot's copy on a standby that `dsn` names (libpq multi-host), or None when the DSN
    names a single host or no standby answers."""
    if len(dsn_hosts(dsn)) < 2:
        return None
    standby_dsn = make_conninfo(dsn, target_session_attrs="standby")
    try:
        conn = await connect(standby_dsn, "standby", application_name="wal2vec-monitor")
    except SourceUnavailable:
        return None
    try:
        row = await (await conn.execute(_STANDBY_QUERY, (slot,))).fetchone()
        host = conn.info.host
    finally:
        await conn.close()
    assert row is not None  # the LEFT JOIN from one row always yields one
    synced, confirmed, invalidation, temporary = row
    return StandbyCopy(
        host=host,
        exists=synced is not None,
        synced=bool(synced),
        confirmed_flush=Lsn.parse(confirmed) if confirmed else None,
        invalidation=invalidation,
        temporary=bool(temporary),
    )
