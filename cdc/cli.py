"""The `cdc` command: parse arguments, load configuration, run a command, map errors to exit codes.

Exit codes: 0 success; 1 the command ran and found a problem; 2 bad usage or configuration;
3 a database or the embedding service cannot be reached or used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from prometheus_client import disable_created_metrics

from cdc import __version__
from cdc.config import Settings, known_secrets, load_config
from cdc.embedding.factory import make_provider
from cdc.errors import CdcError, ConfigError
from cdc.logs import Scrubber, configure_logging, scrubbed_output
from cdc.metrics import Health, Metrics, serve_http

log = logging.getLogger("cdc")

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    # Every line this command prints or logs passes through it: patterns, and the secret
    # values known from the environment and, once loaded, the configuration.
    scrubber = Scrubber(known_secrets(None, os.environ))
    try:
        if args.command == "demo":  # builds its own configuration
            configure_logging(args.log_level or "warning", args.log_format or "text", scrubber)
            return int(asyncio.run(_demo(args)))
        settings = load_config(args.config)
        scrubber = scrubber.with_secrets(known_secrets(settings, os.environ))
        configure_logging(
            args.log_level or settings.log.level, args.log_format or settings.log.format, scrubber
        )
        with scrubbed_output(scrubber):
            result: int = asyncio.run(args.handler(settings, args))
        return result
    except CdcError as error:
        print(f"cdc {args.command}: {scrubber(error.message)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return EXIT_PROBLEM
    except Exception:
        # A bug: its traceback helps, but what it quotes may hold a secret.
        print(scrubber(traceback.format_exc()), end="", file=sys.stderr)
        return EXIT_PROBLEM


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc", description="Keep pgvector embeddings in step with PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"wal2vec {__version__}")
    # Before the command (`cdc --config x status`) or after it (`cdc status --config x`); after
    # it, a value is set only when given, so it never hides one given before.
    _global_options(parser, config=True, default=None)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, config=True, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    setup = commands.add_parser("setup", parents=[common], help="check the source, create objects")
    setup.add_argument("--print-sql", action="store_true", help="print the DDL instead")
    setup.set_defaults(handler=_setup)

    run = commands.add_parser("run", parents=[common], help="stream changes into the sink")
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", parents=[common], help="slot, lag and vector counts")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    verify = commands.add_parser(
        "verify", parents=[common], help="compare the sink with the source (exit 1 on drift)"
    )
    verify.add_argument("--table", help="only this configured table (schema.table)")
    verify.add_argument(
        "--repair", action="store_true", help="fix the drift (stop `cdc run` first)"
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=_verify)

    dead = commands.add_parser("dead-letters", help="rows the embedding API rejected: list, retry")
    dead_commands = dead.add_subparsers(dest="action", metavar="ACTION", required=True)
    dead_list = dead_commands.add_parser("list", parents=[common], help="show them")
    dead_list.add_argument("--table", help="only this configured table (schema.table)")
    dead_list.add_argument("--json", action="store_true", help="print JSON")
    dead_list.set_defaults(handler=_dead_letters_list)
    dead_retry = dead_commands.add_parser(
        "retry", parents=[common], help="re-embed them from the source (safe during `cdc run`)"
    )
    dead_retry.add_argument("--table", help="only this configured table (schema.table)")
    dead_retry.add_argument("--json", action="store_true", help="print JSON")
    dead_retry.set_defaults(handler=_dead_letters_retry)

    resync = commands.add_parser(
        "resync",
        parents=[common],
        help="take the snapshot again: every table (resets the slot), or --table beside the stream",
    )
    resync.add_argument(
        "--table",
        action="append",
        help="re-read only this configured table while streaming goes on (repeatable)",
    )
    resync.add_argument(
        "--no-wait",
        action="store_true",
        help="when `cdc run` is running, only request the resync; do not wait for it",
    )
    resync.set_defaults(handler=_resync)

    estimate = commands.add_parser(
        "estimate",
        parents=[common],
        help="rows, chunks, tokens, requests and cost of a snapshot or resync (embeds nothing)",
    )
    estimate.add_argument("--table", help="only this configured table (schema.table)")
    estimate.add_argument("--json", action="store_true", help="print JSON")
    estimate.add_argument(
        "--sample-rows",
        type=_positive,
        default=None,
        metavar="N",
        help="tables the server estimates at more than N rows are read as a sample of about "
        "N rows, the figures extrapolated (default 10000)",
    )
    estimate.add_argument(
        "--exact", action="store_true", help="read every row of every table, whatever its size"
    )
    estimate.set_defaults(handler=_estimate)

    demo = commands.add_parser(
        "demo",
        help="the whole thing on an embedded PostgreSQL with a local model (no --config)",
    )
    _global_options(demo, config=False, default=argparse.SUPPRESS)

    teardown = commands.add_parser("teardown", parents=[common], help="drop the slot")
    teardown.add_argument("--all", action="store_true", help="also drop the publication")
    teardown.set_defaults(handler=_teardown)
    _search_parsers(commands, common)
    return parser


def _global_options(parser: argparse.ArgumentParser, *, config: bool, default: object) -> None:
    if config:
        parser.add_argument(
            "--config", default=default, help="configuration file (default: $CDC_CONFIG)"
        )
    parser.add_argument(
        "--log-level", default=default, choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default=default, choices=["text", "json"])


async def _setup(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.db import connect
    from cdc.sink.provision import ensure, setup_script

    source = await connect(settings.source.dsn, "source")
    sink = await connect(settings.sink_dsn, "sink")
    try:
        if args.print_sql:
            print(await setup_script(settings, source, sink), end="")
            return EXIT_OK
        tables = await ensure(settings, source, sink)
        for table in tables:
            print(f"ok  {table.name}  key ({', '.join(table.key_names)})")
        if settings.source.plugin == "pgoutput":
            print(f"publication {settings.source.publication} and sink tables are ready")
        else:
            print(f"sink tables are ready ({settings.source.plugin} needs no publication)")
        return EXIT_OK
    finally:
        await source.close()
        await sink.close()


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.pipeline.runner import run
    from cdc.replication.leadership import instance_name

    # Counters' `_created` series only clutter dashboards; process-wide, so set here, once.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    # Every connection of this process names it in pg_stat_activity (libpq reads PGAPPNAME;
    # an application_name in a DSN still wins): an operator, and `cdc status`, can tell which
    # instance is which, and which one leads.
    os.environ.setdefault("PGAPPNAME", f"wal2vec {instance_name()}"[:63])
    metrics, health, stop = Metrics(), Health(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stopper(stop, signum, deadline=settings.shutdown_timeout))
    server = await serve_http(metrics, health, settings.metrics.host, settings.metrics.port)
    port = server.sockets[0].getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", settings.metrics.host, port)
    try:
        await run(settings, make_provider, metrics, health, stop)
    finally:
        server.close()
    log.info("stopped cleanly")
    return EXIT_OK


async def _resync(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.resync import resync_all
    from cdc.pipeline.runner import run
    from cdc.source.resync import request_table_resync, slot_active, wait_for_resyncs

    disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics, stop = Metrics(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stopper(stop, signum))
    if not args.table:
        await resync_all(settings, make_provider, metrics, stop, print, wait=not args.no_wait)
        return EXIT_OK
    tables = _configured_tables(settings, args.table)
    await request_table_resync(settings, tables)
    if await slot_active(settings):
        print(f"requested: the running `cdc run` re-reads {', '.join(tables)}")
        if not args.no_wait:
            await wait_for_resyncs(settings, tables, print, stop)
        return EXIT_OK
    print(f"resyncing {', '.join(tables)} (streaming meanwhile; stops when done)")
    await run(settings, make_provider, metrics, Health(), stop, exit_when_resynced=True)
    print("resync complete")
    return EXIT_OK


def _configured_tables(settings: Settings, names: Sequence[str]) -> list[str]:
    configured = [t.table for t in settings.tables]
    unknown = [name for name in names if name not in configured]
    if unknown:
        raise ConfigError(
            f"--table {', '.join(unknown)} is not a configured table; configured: "
            f"{', '.join(configured)}"
        )
    return list(dict.fromkeys(names))


def _stopper(stop: asyncio.Event, signum: int, deadline: float | None = None) -> Callable[[], None]:
    """A signal handler that asks for a clean stop; with `deadline`, one that also exits the
    process once that many seconds have passed, wherever the stop stands."""

    def request_stop() -> None:
        if stop.is_set():
            return
        log.info("%s received: draining the buffer, then stopping", signal.Signals(signum).name)
        stop.set()
        if deadline is not None:
            asyncio.get_running_loop().call_later(deadline, _exit_now, deadline)

    return request_stop


def _exit_now(deadline: float) -> None:
    # A last resort: the streamer abandons its batch in flight before this. Exiting here is
    # safe all the same, as nothing unapplied was ever confirmed to the server.
    log.warning("still stopping after shutdown_timeout (%.0fs): exiting now", deadline)
    logging.shutdown()
    os._exit(EXIT_OK)


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.status import collect_status, render_status

    report = await collect_status(settings)
    print(json.dumps(report, indent=2) if args.json else render_status(report))
    return EXIT_OK if report["healthy"] else EXIT_PROBLEM


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.verify import render_outcome, verify

    outcome = await verify(settings, args.table, args.repair, make_provider)
    print(json.dumps(outcome.as_dict(), indent=2) if args.json else render_outcome(outcome))
    return EXIT_PROBLEM if outcome.drift else EXIT_OK


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


async def _estimate(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.estimate import DEFAULT_SAMPLE_ROWS, estimate, render_estimate

    if args.exact and args.sample_rows is not None:
        raise ConfigError("--exact reads every row: give it or --sample-rows, not both")
    sample_rows = None if args.exact else args.sample_rows or DEFAULT_SAMPLE_ROWS
    report = await estimate(settings, args.table, sample_rows)
    print(json.dumps(report.as_dict(), indent=2) if args.json else render_estimate(report))
    return EXIT_OK


async def _dead_letters_list(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.dead_letters import list_dead_letters, render_list

    rows = await list_dead_letters(settings, args.table)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        print(render_list(rows))
    return EXIT_OK


async def _dead_letters_retry(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.dead_letters import render_retry, retry_dead_letters

    report = await retry_dead_letters(settings, args.table, make_provider)
    print(json.dumps(report.as_dict(), indent=2) if args.json else render_retry(report))
    return EXIT_PROBLEM if report.still_failing else EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from cdc.commands.demo import run_demo

    disable_created_metrics()  # type: ignore[no-untyped-call]
    # SIGTERM as Ctrl-C: cancel, so the streamer drains and the server stops on the way out.
    task = asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    try:
        await run_demo(sys.stdout, sys.stderr)
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        task.uncancel()
        print("cdc demo: stopped by SIGTERM", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


async def _teardown(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.status import teardown

    for line in await teardown(settings, drop_publication=args.all):
        print(line)
    return EXIT_OK


# -- search and similar -----------------------------------------------------------------------


def _search_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    find = argparse.ArgumentParser(add_help=False)
    find.add_argument("-k", type=int, default=10, help="rows to return (default 10)")
    find.add_argument(
        "--where",
        action="append",
        metavar="COL=VALUE",
        help="only rows whose metadata column COL is VALUE (repeatable, ANDed)",
    )
    find.add_argument("--json", action="store_true", help="print JSON")
    search = commands.add_parser(
        "search", parents=[common, find], help="rows nearest in meaning to a text"
    )
    search.add_argument("text", metavar="TEXT")
    search.add_argument("--table", help="only this configured table (default: all)")
    search.set_defaults(handler=_search)
    similar = commands.add_parser(
        "similar", parents=[common, find], help="rows nearest to a row, from its stored vectors"
    )
    similar.add_argument("--table", required=True, help="the row's configured table")
    similar.add_argument("--id", required=True, help='its source_id (composite: \'["en", "42"]\')')
    similar.add_argument("--in", dest="in_table", help="look in this table (default: --table)")
    similar.set_defaults(handler=_similar)


async def _search(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.search import check_search, hits_json, parse_where, render_hits, search

    where = parse_where(args.where)
    # The arguments and the sink first: a mistake there is named before a model loads.
    if not await check_search(settings, args.text, table=args.table, k=args.k, where=where):
        print(
            "cdc search: the sink holds no vectors yet: `cdc run` embeds the rows "
            "(see `cdc status`)",
            file=sys.stderr,
        )
        hits = []
    else:
        provider = make_provider(settings)
        try:
            hits = await search(
                settings, provider, args.text, table=args.table, k=args.k, where=where
            )
        finally:
            await provider.aclose()
    print(json.dumps(hits_json(hits), indent=2) if args.json else render_hits(hits))
    return EXIT_OK


async def _similar(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.commands.search import hits_json, parse_where, render_hits, similar

    hits = await similar(
        settings,
        table=args.table,
        source_id=args.id,
        in_table=args.in_table,
        k=args.k,
        where=parse_where(args.where),
    )
    print(json.dumps(hits_json(hits), indent=2) if args.json else render_hits(hits))
    return EXIT_OK
