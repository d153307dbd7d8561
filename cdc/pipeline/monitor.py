"""The slot monitor: the server's view of the replication slot, polled over its own connection.

The streamer knows the server only through the frames it reads: nothing new while its reader
waits on a full buffer, nothing at all between sessions. Every `metrics.poll_interval` seconds
the monitor asks the server itself for its current WAL position, the slot's state (active,
wal_status, restart and confirmed flush LSNs) and `max_slot_wal_keep_size`, and, until the
initial snapshot is done, how many rows each table holds; and the sink for how many rows wait
in the dead-letter table (`cdc_dead_letter_rows`). A failed poll is logged and counted;
it never stops the streamer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from cdc import __version__
from cdc.config import Settings
from cdc.db import Conn, connect
from cdc.logs import bind_context
from cdc.metrics import Health, Metrics
from cdc.replication.slots import SlotSample, poll_slot, standby_copy
from cdc.sink.reads import dead_letter_counts
from cdc.source.estimates import live_rows

log = logging.getLogger(__name__)
# A poll that takes longer than this is abandoned and its connection dropped.
POLL_TIMEOUT = 10.0
# Seconds between looks at the standby's copy of a failover slot (a connection each time).
STANDBY_CHECK_INTERVAL = 15.0
# How long `cdc run` waits for the first poll before it starts, so the row estimates the
# snapshot's progress is measured against are in place; a server that is down costs no more.
FIRST_POLL_WAIT = 3.0


def record_sample(metrics: Metrics, sample: SlotSample) -> None:
    """Set the slot gauges from one poll."""
    metrics.slot_failover.set(1 if sample.failover else 0)
    metrics.positions.from_slot(sample.server_lsn, sample.confirmed_flush)
    retained = 0 if sample.restart_lsn is None else sample.server_lsn - sample.restart_lsn
    metrics.slot_retained_wal_bytes.set(max(0, retained))
    metrics.slot_max_wal_keep_bytes.set(sample.max_wal_keep_bytes)
    # A slot that exists but never reserved WAL has no wal_status yet: count it reserved.
    status = (sample.wal_status or "reserved") if sample.exists else None
    metrics.record_slot(status, sample.active)


class SlotMonitor:
    """Polls the server every `metrics.poll_interval` seconds for as long as `run` runs."""

    def __init__(self, settings: Settings, metrics: Metrics, health: Health) -> None:
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._conn: Conn | None = None
        self._sink_conn: Conn | None = None  # only when the sink is another database
        self._failing = False
        self._standby_checked: float | None = None
        self.polled = asyncio.Event()  # set once the first poll ended, well or not

    async def run(self) -> None:
        interval = self._settings.metrics.poll_interval
        try:
            while True:
                await self.poll()
                self.polled.set()
                await asyncio.sleep(interval)  # the poll period, not a wait on anything
        finally:
            await self._close()

    async def poll(self) -> bool:
        """Poll once; True if it worked. Never raises but for cancellation."""
        try:
            await asyncio.wait_for(self._poll(), POLL_TIMEOUT)
        except Exception as error:
            self._metrics.slot_poll_errors.inc()
            await self._close()  # a connection in an unknown state is not reused
            if not self._failing:
                log.warning(
                    "cannot poll the state of slot %s: %s; retrying every %gs",
                    self._settings.source.slot,
                    _describe(error),
                    self._settings.metrics.poll_interval,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("polling the state of slot %s again", self._settings.source.slot)
        self._failing = False
        return True

    async def _poll(self) -> None:
        if self._conn is None:
            self._conn = await connect(
                self._settings.source.dsn, "source", application_name="wal2vec-monitor"
            )
        sample = await poll_slot(self._conn, self._settings.source.slot)
        record_sample(self._metrics, sample)
        await self._check_standby()
        if not self._health.snapshot_done:
            estimates = await live_rows(self._conn, self._settings.tables)
            # A count that returns after the snapshot ended may include rows written since:
            # the estimate is of what the snapshot reads, so it is dropped then.
            if not self._health.snapshot_done:
                for table, count in estimates.items():
                    self._metrics.snapshot_rows_estimated.labels(table=table).set(count)
        dead = await dead_letter_counts(await self._sink(self._conn), self._settings)
        if dead is not None:
            tables = self._settings.tables
            self._metrics.record_dead_letters({t.table: dead.get(t.table, 0) for t in tables})

    async def _check_standby(self) -> None:
        """With source.failover: does a standby hold a copy a promotion could use?"""
        now = time.monotonic()
        if not self._settings.source.failover or (
            self._standby_checked is not None
            and now - self._standby_checked < STANDBY_CHECK_INTERVAL
        ):
            return
        self._standby_checked = now
        source = self._settings.source
        copy = await standby_copy(source.dsn, source.slot)
        self._metrics.slot_failover_synced.set(1 if copy is not None and copy.ready else 0)

    async def _sink(self, source: Conn) -> Conn:
        if self._settings.sink_dsn == self._settings.source.dsn:
            return source
        if self._sink_conn is None:
            self._sink_conn = await connect(
                self._settings.sink_dsn, "sink", application_name="wal2vec-monitor"
            )
        return self._sink_conn

    async def _close(self) -> None:
        conns = (self._conn, self._sink_conn)
        self._conn = self._sink_conn = None
        for conn in conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {POLL_TIMEOUT:g}s"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextlib.asynccontextmanager
async def observing(settings: Settings, metrics: Metrics, health: Health) -> AsyncIterator[None]:
    """For the lifetime of `cdc run`: label the metrics and the logs, and poll the slot."""
    metrics.prepare(settings, __version__)
    unbind = bind_context(slot=settings.source.slot)
    monitor = SlotMonitor(settings, metrics, health)
    task = asyncio.create_task(monitor.run(), name="slot-monitor")
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(monitor.polled.wait(), FIRST_POLL_WAIT)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        unbind()
