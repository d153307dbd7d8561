"""`cdc resync` without `--table`: reset the slot and take the snapshot again.

With the model (or dimensions, or vector type) unchanged, the new snapshot goes through the
usual embed -> sink path into the same tables: content whose hash and model match what the sink
holds costs no API call, and rows gone from the source lose their vectors.

With the model changed, the vectors are rebuilt into new tables beside the live ones, loaded
without an index and indexed once complete; then, in one transaction, the new tables take the
live tables' names and the state names the new model. Readers query the old vectors, with their
index, until that moment; the old tables are dropped only after it.

When `cdc run` holds the slot, a plain resync is requested of it (it notices, ends its session,
and takes the snapshot again); a rebuild needs it stopped, since it would keep writing vectors
of the old model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack

from cdc.apply.applier import Applier
from cdc.config import Settings
from cdc.embedding.factory import ProviderFactory
from cdc.errors import ConfigError
from cdc.metrics import Metrics
from cdc.pipeline.runner import Parts, open_parts
from cdc.sink.progress import TableProgress
from cdc.sink.provision import vector_type_of, wanted_vector_type
from cdc.sink.shadow import check_rebuild_owns, prepare_shadow, retire, shadow_name, swap
from cdc.sink.store import Sink
from cdc.source.snapshot import SnapshotParts, take_snapshot

log = logging.getLogger(__name__)
Say = Callable[[str], None]


async def resync_all(
    settings: Settings,
    make_provider: ProviderFactory,
    metrics: Metrics,
    stop: asyncio.Event,
    say: Say,
    *,
    wait: bool = True,
) -> None:
    async with AsyncExitStack() as stack:
        parts = await open_parts(stack, settings, make_provider, metrics, check_model=False)
        changed = await _model_change(parts)
        if changed:
            # Before anything is dropped: a refusal leaves the slot and the sink as they were.
            await check_rebuild_owns(parts.sink_conn, settings)
        if parts.slot is not None and parts.slot.active:
            if changed:
                raise ConfigError(
                    f"{changed}, and `cdc run` is using slot {settings.source.slot} with the old "
                    "model: stop it, run `cdc resync` to rebuild, then start `cdc run` again"
                )
            await parts.sink.state.request_snapshot()
            say("requested: the running `cdc run` takes the snapshot again")
            if wait:
                await _wait_for_snapshot(parts.sink, say, stop)
            return
        if parts.slot is not None:
            parts.stream.drop_slot()
            say(f"dropped slot {settings.source.slot}")
        if changed:
            say(f"{changed}: rebuilding the vectors into new tables")
            await _rebuild(parts, make_provider, metrics, stop)
        else:
            snapshot = SnapshotParts(settings, parts.sink, parts.applier, metrics, stop)
            checkpoint = await take_snapshot(snapshot, parts.stream, parts.tables)
            await parts.sink.mark_snapshot(done=True, checkpoint=checkpoint)
        say(f"resync complete; `cdc run` streams from slot {settings.source.slot}")


async def _model_change(parts: Parts) -> str | None:
    """What differs between the configuration and the vectors the sink holds, if anything."""
    settings, state = parts.settings, parts.state
    embedding = settings.embedding
    if state.model is not None and (state.model, state.dimensions) != (
        embedding.model,
        embedding.dimensions,
    ):
        return (
            f"the sink holds model {state.model} ({state.dimensions} dimensions), the "
            f"configuration asks for {embedding.model} ({embedding.dimensions} dimensions)"
        )
    wanted = wanted_vector_type(settings)
    for schema, table in settings.sink_tables():
        found = await vector_type_of(parts.sink_conn, schema, table)
        if found is not None and found != wanted:
            return f"sink table {schema}.{table} holds {found}, the configuration asks for {wanted}"
    return None


async def _rebuild(
    parts: Parts, make_provider: ProviderFactory, metrics: Metrics, stop: asyncio.Event
) -> None:
    settings, conn = parts.settings, parts.sink_conn
    live = settings.sink_tables()
    for schema, table in live:
        await prepare_shadow(conn, settings, schema, table)
    shadows = {
        t.table: (settings.target_of(t)[0], shadow_name(settings.target_of(t)[1]))
        for t in settings.tables
    }
    sink = await Sink.connect(conn, settings, targets=shadows)
    applier = Applier(settings, sink, parts.provider, metrics)
    snapshot = SnapshotParts(settings, sink, applier, metrics, stop)
    checkpoint = await take_snapshot(snapshot, parts.stream, parts.tables)
    async with conn.transaction():
        for schema, table in live:
            await swap(conn, schema, table)
        await sink.mark_snapshot(done=True, checkpoint=checkpoint)
    log.info("the rebuilt tables are live; dropping the old ones")
    for schema, table in live:
        await retire(conn, schema, table)


async def _wait_for_snapshot(sink: Sink, say: Say, stop: asyncio.Event) -> None:
    """Poll until the running streamer's new snapshot is complete, saying how far it got."""
    last = ""
    while not stop.is_set():
        state = await sink.state.load()
        if state.snapshot_done:
            say("resync complete")
            return
        line = _progress_line(await sink.progress.all())
        if line and line != last:
            say(line)
            last = line
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def _progress_line(progress: list[TableProgress]) -> str:
    return ", ".join(
        f"{p.source_table}: {p.rows_done}/{p.rows_estimated or '?'}"
        for p in progress
        if p.kind == "snapshot"
    )
