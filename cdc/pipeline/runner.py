"""`cdc run`: sessions of snapshot-then-stream, restarted with backoff when a connection drops.

A session that fails for a reason that may pass (a database or the embedding service went
away) is torn down whole and started again from the sink's checkpoint: the server resends what
was not confirmed, and nothing confirmed was left unapplied. Crash-only recovery, in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc.apply.applier import Applier
from cdc.apply.parallel import WriterPool
from cdc.config import Settings
from cdc.db import Conn, connect
from cdc.embedding.factory import ProviderFactory
from cdc.embedding.providers import EmbeddingProvider
from cdc.errors import CdcError, ConfigError, LeadershipLost, SourceUnavailable
from cdc.metrics import Health, Metrics
from cdc.pipeline.flow import Session
from cdc.pipeline.heap import release_free_memory
from cdc.pipeline.monitor import observing
from cdc.pipeline.streamer import Streamer
from cdc.replication.leadership import Leadership, instance_name
from cdc.replication.plugins import OutputPlugin
from cdc.replication.positions import Position
from cdc.replication.reconnect import ReconnectBackoff
from cdc.replication.slots import SlotInfo, check_slot_usable, slot_info
from cdc.replication.stream import ReplicationStream, SlotSpec
from cdc.sink.fence import claim_term
from cdc.sink.migrations import TypeWatch
from cdc.sink.provision import check_sink_shape, ensure, ensure_indexes
from cdc.sink.schema import SinkNames
from cdc.sink.state import SinkState
from cdc.sink.store import Sink
from cdc.source.reads import SourceTable
from cdc.source.resync import ResyncRequested, ResyncWorker, new_windows
from cdc.source.snapshot import SnapshotInterrupted, SnapshotParts, take_snapshot

log = logging.getLogger(__name__)
# Consecutive failed starts before `run` gives up, as long as it never streamed.
MAX_FAILED_STARTS = 5
MAX_BACKOFF = 60.0
# Seconds between attempts while only a standby answers (a promotion is probably under way).
PROMOTION_RETRY = 1.0


async def run(
    settings: Settings,
    make_provider: ProviderFactory,
    metrics: Metrics,
    health: Health,
    stop: asyncio.Event,
    *,
    exit_when_resynced: bool = False,
) -> None:
    """Stream until `stop`; with `exit_when_resynced`, until no per-table resync is left.

    With `leader.election` (the default) the instance first takes the lead of its slot, or
    stands by until it can (`cdc.replication.leadership`).
    """
    job = _Job(settings, make_provider, metrics, health, stop, exit_when_resynced)
    async with observing(settings, metrics, health):
        if settings.leader.election:
            await _lead_when_elected(job)
        else:
            health.lead()
            metrics.leader.labels(slot=settings.source.slot).set(1)
            await _run_sessions(job, leader=None)


@dataclass(frozen=True)
class _Job:
    """What every session of one `run` is started with."""

    settings: Settings
    make_provider: ProviderFactory
    metrics: Metrics
    health: Health
    stop: asyncio.Event
    exit_when_resynced: bool


async def _lead_when_elected(job: _Job) -> None:
    """Stand by until elected, lead until stopped; stand by again if the lead is lost."""
    settings, health = job.settings, job.health
    slot = settings.source.slot
    leadership = Leadership(settings, instance_name())
    gauge = job.metrics.leader.labels(slot=slot)
    gauge.set(0)
    try:
        while await leadership.acquire(job.stop, health):
            log.info("leading slot %s as %s", slot, leadership.instance)
            health.lead()
            gauge.set(1)
            try:
                async with leadership.leading() as keeper:
                    await _until_lost(_run_sessions(job, leader=leadership.instance), keeper)
                return
            except LeadershipLost as lost:
                log.warning("%s", lost.message)
            gauge.set(0)
            health.stand_by(connected=False)
    finally:
        gauge.set(0)
        await leadership.close()


async def _until_lost(sessions: Coroutine[Any, Any, None], keeper: asyncio.Task[None]) -> None:
    """Run `sessions` until they end; cancel them, and raise, if `keeper` fails first."""
    work = asyncio.create_task(sessions, name="sessions")
    try:
        await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.done() and not work.cancelled():
        work.result()  # the sessions' own end, or their error
        return
    keeper.result()  # raises LeadershipLost


async def _run_sessions(job: _Job, leader: str | None) -> None:
    health, stop = job.health, job.stop
    backoff = ReconnectBackoff(cap=MAX_BACKOFF)
    streamed_once = False
    while not stop.is_set():
        started = time.monotonic()
        try:
            await _session(job, leader)
            return
        except ResyncRequested as request:
            log.info("%s", request.message)
            continue
        except SnapshotInterrupted:
            log.info("stopped during the snapshot; the next start takes it again")
            return
        except (CdcError, psycopg.OperationalError) as error:
            if isinstance(error, CdcError) and not error.retriable:
                raise
            streamed_once = streamed_once or health.streaming_seen
            delay = backoff.failed(_streamed_for(health, started), random.random())
            if not streamed_once and backoff.failures >= MAX_FAILED_STARTS:
                raise _as_unavailable(error) from None
            if _promotion_likely(error):
                delay = min(delay, PROMOTION_RETRY)
            log.warning("%s; starting again in %.1fs", _describe(error), delay)
            await _sleep_unless(stop, delay)


def _promotion_likely(error: Exception) -> bool:
    """The only server that answered is a standby (a failover is probably under way), or the
    slot is still held by an earlier leader's reader: either passes in moments, so look every
    second rather than after a growing backoff."""
    text = str(error)
    return any(sign in text for sign in _STANDBY_SIGNS)


_STANDBY_SIGNS = (
    "session is read-only",
    "is a standby (in recovery)",
    "in hot standby mode",
    # An earlier leader's walsender, ended by this leader, has not exited yet.
    "is active for PID",
)


def _streamed_for(health: Health, session_started: float) -> float:
    """How long the session that began at `session_started` streamed before it ended."""
    since = health.streaming_since
    if since is None or since < session_started:
        return 0.0
    return time.monotonic() - since


def _as_unavailable(error: Exception) -> CdcError:
    return error if isinstance(error, CdcError) else SourceUnavailable(_describe(error))


def _describe(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


@dataclass
class Parts:
    """What a session (or a resync) works with, opened and checked."""

    settings: Settings
    source: Conn
    sink_conn: Conn
    tables: list[SourceTable]
    sink: Sink
    state: SinkState
    provider: EmbeddingProvider
    applier: Applier
    stream: ReplicationStream
    slot: SlotInfo | None


async def open_parts(
    stack: AsyncExitStack,
    settings: Settings,
    make_provider: ProviderFactory,
    metrics: Metrics,
    *,
    check_model: bool = True,
    leader: str | None = None,
) -> Parts:
    """Connect, check and set up what a session needs. A `leader` first claims a term in the
    sink (`cdc.sink.fence`), so the state it reads next is final."""
    source = await connect(settings.source.dsn, "source")
    stack.push_async_callback(source.close)
    sink_conn = await connect(settings.sink_dsn, "sink")
    stack.push_async_callback(sink_conn.close)
    tables = await ensure(settings, source, sink_conn, indexes=False, check_shape=False)
    fence = None
    if leader is not None:
        names = SinkNames.of(settings)
        fence = await claim_term(
            sink_conn, names, settings.source.slot, leader, patience=settings.leader.lease
        )
    sink = await Sink.connect(sink_conn, settings, fence=fence)
    state = await sink.state.load()
    if check_model:
        # The model first: when it changed, that is the news, not the dimensions with it.
        _check_model(settings, state)
        await check_sink_shape(settings, sink_conn)
    if state.snapshot_done:
        await ensure_indexes(settings, sink_conn)
    # On a thread: a local model takes seconds to load, and /healthz must answer meanwhile.
    provider = await asyncio.to_thread(make_provider, settings, metrics)
    stack.push_async_callback(provider.aclose)
    stream = open_stream(settings)
    stack.callback(stream.close)
    slot = await slot_info(source, settings.source.slot)
    if slot is not None and settings.source.failover and slot.failover is False:
        log.info("marking slot %s for failover (source.failover)", slot.name)
        stream.mark_failover()
        slot = await slot_info(source, settings.source.slot)
    return Parts(
        settings=settings,
        source=source,
        sink_conn=sink_conn,
        tables=tables,
        sink=sink,
        state=state,
        provider=provider,
        applier=Applier(settings, sink, provider, metrics),
        stream=stream,
        slot=slot,
    )


def open_stream(settings: Settings) -> ReplicationStream:
    source = settings.source
    spec = SlotSpec(source.slot, OutputPlugin.of(settings), failover=source.failover)
    return ReplicationStream.connect(source.dsn, spec)


async def snapshot_if_needed(parts: Parts, metrics: Metrics, stop: asyncio.Event) -> Position:
    """The checkpoint to stream from, after taking the snapshot if it is not done."""
    state, slot = parts.state, parts.slot
    check_slot_usable(slot, state.snapshot_done, parts.settings.source.slot)
    if state.snapshot_done:
        return state.position
    if slot is not None:
        log.info("slot %s exists but its snapshot is not complete: taking it again", slot.name)
        parts.stream.drop_slot()
    # Recorded before the read, so a type change while the snapshot runs is seen after it.
    watch = TypeWatch(parts.sink_conn, SinkNames.of(parts.settings), parts.settings.source.slot)
    await watch.record(parts.source, parts.tables)
    snapshot = SnapshotParts(parts.settings, parts.sink, parts.applier, metrics, stop)
    checkpoint = await take_snapshot(snapshot, parts.stream, parts.tables)
    await parts.sink.mark_snapshot(done=True, checkpoint=checkpoint)
    release_free_memory()
    return Position(checkpoint)


async def _session(job: _Job, leader: str | None) -> None:
    settings, metrics, health, stop = job.settings, job.metrics, job.health, job.stop
    exit_when_resynced = job.exit_when_resynced
    async with AsyncExitStack() as stack:
        parts = await open_parts(stack, settings, job.make_provider, metrics, leader=leader)
        checkpoint = await snapshot_if_needed(parts, metrics, stop)
        health.snapshot_done = True
        # The positions a previous session's writers stored (a new snapshot cleared them).
        stored = parts.state.writers if parts.state.snapshot_done else None
        await parts.sink.use_writers(checkpoint, stored)
        writers = WriterPool(await _writer_appliers(stack, parts), metrics, stored)
        tables = {t.name: t for t in parts.tables}
        resyncs = ResyncWorker(
            settings,
            tables,
            parts.applier,
            metrics,
            new_windows(),
            stop,
            exit_when_idle=exit_when_resynced,
        )
        session = Session(
            settings=settings,
            stream=parts.stream,
            source=parts.source,
            tables=tables,
            applier=parts.applier,
            metrics=metrics,
            health=health,
            checkpoint=checkpoint,
            resyncs=resyncs,
            writers=writers,
            writer_positions=stored,
        )
        await Streamer(session, stop).run()


async def _writer_appliers(stack: AsyncExitStack, parts: Parts) -> list[Applier]:
    """The session's applier and, for `sink.writers` > 1, one more per writer, each on a sink
    connection of its own, in the same term (`Sink.sibling`). Each reads what the sink holds
    through one more connection, so the next batch is prepared while one is written."""
    appliers = [parts.applier]
    for _ in range(parts.settings.sink.writers - 1):
        appliers.append(parts.applier.sibling(await _sink_sibling(stack, parts)))
    for applier in appliers:
        applier.looking_up_through((await _sink_sibling(stack, parts)).reads)
    return appliers


async def _sink_sibling(stack: AsyncExitStack, parts: Parts) -> Sink:
    conn = await connect(parts.settings.sink_dsn, "sink")
    stack.push_async_callback(conn.close)
    return await parts.sink.sibling(conn)


def _check_model(settings: Settings, state: SinkState) -> None:
    embedding = settings.embedding
    if state.model is None:
        return
    if (state.model, state.dimensions) != (embedding.model, embedding.dimensions):
        raise ConfigError(
            f"the sink holds vectors of model {state.model} ({state.dimensions} dimensions) but "
            f"embedding.model is {embedding.model} ({embedding.dimensions} dimensions): mixing "
            "them would make search meaningless. Run `cdc resync` to rebuild with the new model, "
            "or set embedding.model back"
        )
