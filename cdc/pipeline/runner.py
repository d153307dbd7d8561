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
from contextlib import AsyncExitStack
from dataclasses import dataclass

import psycopg

from cdc.apply.applier import Applier
from cdc.config import Settings
from cdc.db import Conn, connect
from cdc.embedding.factory import ProviderFactory
from cdc.embedding.providers import EmbeddingProvider
from cdc.errors import CdcError, ConfigError, SourceUnavailable
from cdc.metrics import Health, Metrics
from cdc.pipeline.flow import Session
from cdc.pipeline.heap import release_free_memory
from cdc.pipeline.monitor import observing
from cdc.pipeline.streamer import Streamer
from cdc.replication.plugins import OutputPlugin
from cdc.replication.positions import Position
from cdc.replication.reconnect import ReconnectBackoff
from cdc.replication.slots import SlotInfo, check_slot_usable, slot_info
from cdc.replication.stream import ReplicationStream, SlotSpec
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
    """Stream until `stop`; with `exit_when_resynced`, until no per-table resync is left."""
    async with observing(settings, metrics, health):
        await _run_sessions(settings, make_provider, metrics, health, stop, exit_when_resynced)


async def _run_sessions(  # noqa: PLR0917
    settings: Settings,
    make_provider: ProviderFactory,
    metrics: Metrics,
    health: Health,
    stop: asyncio.Event,
    exit_when_resynced: bool,
) -> None:
    backoff = ReconnectBackoff(cap=MAX_BACKOFF)
    streamed_once = False
    while not stop.is_set():
        started = time.monotonic()
        try:
            await _session(settings, make_provider, metrics, health, stop, exit_when_resynced)
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
    """The only server that answered is a standby: a failover is probably under way, and the
    new primary is worth looking for every second rather than after a growing backoff."""
    text = str(error)
    return any(sign in text for sign in _STANDBY_SIGNS)


_STANDBY_SIGNS = ("session is read-only", "is a standby (in recovery)", "in hot standby mode")


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
) -> Parts:
    source = await connect(settings.source.dsn, "source")
    stack.push_async_callback(source.close)
    sink_conn = await connect(settings.sink_dsn, "sink")
    stack.push_async_callback(sink_conn.close)
    tables = await ensure(settings, source, sink_conn, indexes=False, check_shape=False)
    sink = await Sink.connect(sink_conn, settings)
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
    await parts.sink.state.mark_snapshot(done=True, checkpoint=checkpoint)
    release_free_memory()
    return Position(checkpoint)


async def _session(  # noqa: PLR0917
    settings: Settings,
    make_provider: ProviderFactory,
    metrics: Metrics,
    health: Health,
    stop: asyncio.Event,
    exit_when_resynced: bool,
) -> None:
    async with AsyncExitStack() as stack:
        parts = await open_parts(stack, settings, make_provider, metrics)
        checkpoint = await snapshot_if_needed(parts, metrics, stop)
        health.snapshot_done = True
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
        )
        await Streamer(session, stop).run()


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
