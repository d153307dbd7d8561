"""Active/standby: instances with one configuration elect one leader through the source.

The leader is the instance that holds a session-level advisory lock, keyed by the slot, on a
connection of its own to the source database. The others are standbys: they try to take the
lock every `leader.retry_interval` seconds and stay healthy meanwhile.

How the lead passes:
- the leader exits or is killed: the server ends its session, which frees the lock at once;
- the leader freezes or is cut off from the source: its lock session was set up with
  `idle_session_timeout = leader.lease`, and the leader runs a query on it every quarter of
  that; once it misses the lease the server ends the session and frees the lock. A leader
  whose lock session fails stops its session and stands by.

What the lock cannot do is stop a frozen leader that wakes up from writing what it still
holds. The sink's fence does (`cdc.sink.fence`): a new leader claims a term in the sink before
it reads the checkpoint, and every write checks its term. The new leader also ends any
walsender still reading the slot for the old one, since the server lets one reader in at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg

from cdc.config import Settings
from cdc.db import ADVISORY_LOCK_HOLDERS, Conn, connect
from cdc.errors import CdcError, LeadershipLost, SourceUnavailable
from cdc.metrics import Health

log = logging.getLogger(__name__)
# Attempts at the lead before an instance that never reached the source gives up (as
# `cdc.pipeline.runner.MAX_FAILED_STARTS` for sessions).
MAX_FIRST_ATTEMPTS = 5


def instance_name() -> str:
    """This process as operators find it: the host (a pod's name) and the pid."""
    return f"{socket.gethostname()}/{os.getpid()}"


def leader_lock_key(slot: str) -> str:
    """The advisory lock's key text (hashed by the server): one leader per slot and database."""
    return f"wal2vec leader {slot}"


@dataclass(frozen=True, slots=True)
class LeaseTimes:
    """The lock session's idle limit and how often the leader proves itself within it."""

    lease: float

    @property
    def ping_interval(self) -> float:
        # Four chances per lease: a slow round trip or a busy loop costs no lead.
        return self.lease / 4

    @property
    def ping_timeout(self) -> float:
        return self.lease / 2

    @property
    def idle_session_timeout_ms(self) -> int:
        return int(self.lease * 1000)


class Leadership:
    """One instance's side of the election, on its own source connection."""

    def __init__(self, settings: Settings, instance: str) -> None:
        self._settings = settings
        self._times = LeaseTimes(settings.leader.lease)
        self._key = leader_lock_key(settings.source.slot)
        self.instance = instance
        self._conn: Conn | None = None
        self._reached = False  # whether the source ever answered this instance

    async def acquire(self, stop: asyncio.Event, health: Health) -> bool:
        """Wait until this instance leads (True) or `stop` is set (False).

        An instance that has never reached the source gives up after `MAX_FIRST_ATTEMPTS`
        (a wrong DSN or password is reported, exit 3, not waited on forever); once it has,
        an outage is waited out.
        """
        announced = False
        failures = 0
        while not stop.is_set():
            try:
                leads = await self._try_lock()
                self._reached = True
                if leads:
                    return True
                health.stand_by(connected=True)
                if not announced:
                    log.info(
                        "standing by: another instance leads slot %s; trying every %.1fs",
                        self._settings.source.slot,
                        self._settings.leader.retry_interval,
                    )
                    announced = True
            except (CdcError, psycopg.Error) as error:
                failures += 1
                if isinstance(error, CdcError) and not error.retriable:
                    raise
                if not self._reached and failures >= MAX_FIRST_ATTEMPTS:
                    await self.close()
                    raise _as_unavailable(error) from None
                health.stand_by(connected=False)
                log.warning(
                    "cannot reach the source to take the lead: %s; trying again in %.1fs",
                    _first_line(error),
                    self._retry_delay(failures),
                )
                await self.close()
            await _sleep_unless(stop, self._retry_delay(failures))
        return False

    def _retry_delay(self, failures: int) -> float:
        """The standby's rhythm; before the source ever answered, a backoff (1, 2, 4, 8 s), so
        a source still starting beside this process gets as long as a session's start would."""
        interval = self._settings.leader.retry_interval
        if self._reached or failures == 0:
            return interval
        return max(interval, min(2.0 ** (failures - 1), 8.0))

    @contextlib.asynccontextmanager
    async def leading(self) -> AsyncIterator[asyncio.Task[None]]:
        """While leading: a task that fails with `LeadershipLost` when the lead is lost.

        On the way out the lock is released (the connection closed), so a standby takes over
        without waiting for a lease.
        """
        await self._end_other_readers()
        keeper = asyncio.create_task(self._keep(), name="leadership")
        try:
            yield keeper
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeadershipLost):
                await keeper
            await self.close()

    async def _try_lock(self) -> bool:
        conn = await self._connection()
        query = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
        row = await (await conn.execute(query, (self._key,))).fetchone()
        return bool(row and row[0])

    async def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            conn = await connect(self._settings.source.dsn, "source")
            # The lease: the server ends this session, and frees the lock, once it has been
            # idle this long. Only the leader's pings keep it going.
            await conn.execute(f"SET idle_session_timeout = {self._times.idle_session_timeout_ms}")
            self._conn = conn
        return self._conn

    async def _keep(self) -> None:
        """Run a query on the lock session every ping interval; raise once one fails."""
        while True:
            await asyncio.sleep(self._times.ping_interval)  # the lease's rhythm, not a wait
            try:
                conn = self._conn
                if conn is None:
                    raise LeadershipLost("the lock session is gone")
                await asyncio.wait_for(conn.execute("SELECT 1"), self._times.ping_timeout)
            except (psycopg.Error, TimeoutError) as error:
                raise LeadershipLost(
                    f"lost the lead of slot {self._settings.source.slot}: its lock session "
                    f"on the source failed ({_first_line(error)}); standing by"
                ) from None

    async def _end_other_readers(self) -> None:
        """End a walsender still reading the slot: an earlier leader's, frozen or cut off.

        Only a leader streams, and this one has not started; without this the slot stays
        busy until the server's wal_sender_timeout notices the old reader is gone. Signalled,
        not waited for: a walsender blocked on a frozen reader's full socket exits only once
        that process dies or wakes (in Kubernetes its liveness probe fails first); meanwhile
        the stream's start is tried again every second.
        """
        conn = await self._connection()
        query = (
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = %s AND active_pid IS NOT NULL"
        )
        try:
            cursor = await conn.execute(query, (self._settings.source.slot,))
            for pid, _signalled in await cursor.fetchall():
                log.info("ending pid %s, an earlier leader's reader of the slot", pid)
        except psycopg.Error as error:  # no right to signal it: wait for wal_sender_timeout
            log.warning("cannot end the slot's earlier reader: %s", _first_line(error))

    async def close(self) -> None:
        """Close the lock session, which releases the lock if this instance holds it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


async def lock_holder(conn: Conn, slot: str) -> str | None:
    """The application_name of the session leading `slot` now (`cdc run` sets it to
    "wal2vec HOST/PID"), "" if it has none, None if no instance leads."""
    query = f"SELECT application_name FROM ({ADVISORY_LOCK_HOLDERS}) holders"
    row = await (await conn.execute(query, (leader_lock_key(slot),))).fetchone()
    return None if row is None else str(row[0] or "")


def _as_unavailable(error: Exception) -> CdcError:
    if isinstance(error, CdcError):
        return error
    return SourceUnavailable(f"cannot take the lead on the source: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
