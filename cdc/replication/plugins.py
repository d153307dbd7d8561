"""The output plugins a slot may speak: what START_REPLICATION asks of each, and its decoder.

pgoutput (built into PostgreSQL) and wal2json (format-version 2, common on managed services)
feed the same transaction assembler: both decoders yield the `cdc.replication.messages` types,
so nothing after the decoder knows which plugin the slot speaks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cdc.config import Settings
from cdc.replication.changes import MARK_PREFIX, Transaction
from cdc.replication.pgoutput import PgOutputDecoder
from cdc.replication.transactions import TransactionAssembler
from cdc.replication.wal2json import Wal2JsonDecoder, wal2json_options

PluginName = Literal["pgoutput", "wal2json"]
# Decodes one XLogData payload and feeds what it holds to the assembler; returns what the
# assembler handed on (a committed transaction, or a part of one), if anything.
FrameFeeder = Callable[[memoryview], Transaction | None]


def protocol_options(server_version: int, publication: str) -> tuple[str, ...]:
    """pgoutput options for this server.

    Transactions in progress are not streamed (`streaming` stays off): wal2vec could apply
    none of such a transaction before its commit, so it would have to hold all of it. Left to
    the server, a large transaction spills to disk under `logical_decoding_work_mem` and is
    sent once committed, when it can be applied in parts as it arrives
    (`cdc.replication.transactions`).
    """
    version = "4" if server_version >= 160000 else "3" if server_version >= 150000 else "2"
    if server_version < 140000:
        version = "1"
    options = [f"proto_version '{version}'", f"publication_names '{_quote(publication)}'"]
    if server_version >= 140000:
        # Logical messages carry the watermarks of per-table resyncs (PostgreSQL 14+).
        options.append("messages 'true'")
    return tuple(options)


def _quote(value: str) -> str:
    return value.replace("'", "''")


@dataclass(frozen=True, slots=True)
class OutputPlugin:
    """The plugin a slot uses, with what it needs to know of the configuration."""

    name: PluginName
    # pgoutput streams a publication's tables.
    publication: str
    # wal2json has no publication: it is told the tables ("schema.table") to send.
    tables: tuple[str, ...]

    @classmethod
    def of(cls, settings: Settings) -> OutputPlugin:
        return cls(
            name=settings.source.plugin,
            publication=settings.source.publication,
            tables=tuple(table.table for table in settings.tables),
        )

    @property
    def uses_publication(self) -> bool:
        return self.name == "pgoutput"

    def start_options(self, server_version: int) -> tuple[str, ...]:
        if self.name == "pgoutput":
            return protocol_options(server_version, self.publication)
        # Only wal2vec's own logical messages (resync watermarks): wal2json sends every
        # message of the database otherwise.
        return wal2json_options(self.tables, (MARK_PREFIX,))

    def feeder(self, assembler: TransactionAssembler) -> FrameFeeder:
        """The decode-and-assemble step of the reader's hot path, for this plugin."""
        feed = assembler.feed
        if self.name == "pgoutput":
            decode = PgOutputDecoder().decode

            def feed_pgoutput(payload: memoryview) -> Transaction | None:
                return feed(decode(payload))

            return feed_pgoutput
        decode_all = Wal2JsonDecoder().decode

        def feed_wal2json(payload: memoryview) -> Transaction | None:
            # A payload may hold a synthesized Relation before its change; only the change
            # (or a Commit) can complete a transaction or a part of one.
            handed_on = None
            for message in decode_all(payload):
                handed_on = feed(message) or handed_on
            return handed_on

        return feed_wal2json
