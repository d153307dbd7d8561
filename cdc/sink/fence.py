"""The fence: only the current leader's writes reach the sink.

The leader lock on the source (`cdc.replication.leadership`) says who should stream; it cannot
stop an instance that was frozen or cut off from the source and lost the lock without knowing
it from writing what it still holds. So each session of a leader claims a term in the sink
first: a fresh token in its slot's state row, written under the slot's writer lock. Every
write transaction takes that lock, then checks that the token is still its own
(`Fence.check`), so a claim waits for the writes in flight and every write after it by an
earlier term fails with `LeadershipLost` and rolls back. Writes land in terms, one term at a
time, whatever the clocks and the network do; no write depends on the source being reachable.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from cdc.db import ADVISORY_LOCK_HOLDERS, Conn
from cdc.errors import LeadershipLost
from cdc.sink.schema import SinkNames

log = logging.getLogger(__name__)


def writer_lock_name(schema: str, slot: str) -> str:
    """The advisory lock every write of this slot's sink transaction holds."""
    return f"wal2vec writer {schema} {slot}"


@dataclass(frozen=True, slots=True)
class Fence:
    """A leader's term on one slot: its token, checked inside each write transaction."""

    state: sql.Identifier
    slot: str
    token: str
    leader: str

    async def check(self, conn: Conn) -> None:
        """Inside a write transaction that holds the writer lock: raise `LeadershipLost`
        unless this term is still the slot's."""
        query = sql.SQL("SELECT leader_token::text, leader FROM {} WHERE slot = %s").format(
            self.state
        )
        row = await (await conn.execute(query, (self.slot,))).fetchone()
        if row is None or row[0] != self.token:
            holder = row[1] if row is not None and row[1] else "another instance"
            raise LeadershipLost(
                f"{holder} has taken over slot {self.slot}: this instance ({self.leader}) "
                "writes nothing more and stands by"
            )


async def claim_term(
    conn: Conn, names: SinkNames, slot: str, leader: str, *, patience: float
) -> Fence:
    """Start a term for `leader`: wait for the writes in flight, then make the token its own.

    Its own transaction, committed before the caller reads the checkpoint, so the checkpoint
    it reads is final: no earlier term writes after it. A write that holds the lock longer
    than `patience` seconds belongs to an instance that is frozen or cut off (a live one
    commits in moments): its sessions are ended, which rolls the write back, and the claim
    tries again.
    """
    token = str(uuid.uuid4())
    lock = writer_lock_name(names.schema, slot)
    query = sql.SQL(
        "INSERT INTO {} (slot, leader, leader_token, leader_since) "
        "VALUES (%s, %s, %s::uuid, now()) ON CONFLICT (slot) DO UPDATE SET "
        "leader = EXCLUDED.leader, leader_token = EXCLUDED.leader_token, "
        "leader_since = EXCLUDED.leader_since"
    ).format(names.state)
    while True:
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", (f"{int(patience * 1000)}ms",)
                )
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
                await conn.execute(query, (slot, leader, token))
            return Fence(names.state, slot, token, leader)
        except psycopg.errors.LockNotAvailable:
            for pid, holder in await _end_stale_writers(conn, lock):
                log.warning("ended pid %s of %s: it held the sink's writer lock", pid, holder)


# Sessions of other `cdc run` instances (they name themselves "wal2vec HOST/PID") holding the
# writer lock; a command's sessions (`dead-letters retry`) are waited for, never ended.
_STALE_WRITERS = f"""
SELECT pid, application_name, pg_terminate_backend(pid)
FROM ({ADVISORY_LOCK_HOLDERS}) holders
WHERE application_name LIKE 'wal2vec %%'
    AND application_name <> current_setting('application_name')
"""


async def _end_stale_writers(conn: Conn, lock: str) -> list[tuple[int, str]]:
    rows = await (await conn.execute(_STALE_WRITERS, (lock,))).fetchall()
    return [(int(row[0]), str(row[1])) for row in rows]


@dataclass(frozen=True, slots=True)
class Term:
    """The latest term claimed on a slot, as the sink records it."""

    leader: str
    since: datetime


async def latest_term(conn: Conn, names: SinkNames, slot: str) -> Term | None:
    """Who claimed the slot last and when; None before any leader (or before the state table
    had these columns: `cdc run` adds them)."""
    query = sql.SQL("SELECT leader, leader_since FROM {} WHERE slot = %s").format(names.state)
    try:
        async with conn.transaction():
            row = await (await conn.execute(query, (slot,))).fetchone()
    except psycopg.errors.UndefinedColumn:
        return None
    if row is None or row[0] is None:
        return None
    return Term(str(row[0]), row[1])
