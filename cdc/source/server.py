"""What the source server offers and what wal2vec needs of it, checked by `cdc setup` and `cdc run`.

The facts are read in one query; `assess` is pure, so every rule is testable without a server.
A finding that makes streaming impossible (an old server, `wal_level`, a plugin the server
refuses, failover slots on a server without them) is an error with the exact statement that
fixes it; one that only weakens a guarantee (a failover slot nothing waits for) is a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cdc.config import SourceConfig
from cdc.db import Conn
from cdc.dsn import dsn_hosts
from cdc.errors import ConfigError, SourceUnavailable
from cdc.replication.lsn import Lsn

# Older servers lack what the stream relies on: the option list of CREATE_REPLICATION_SLOT
# (SNAPSHOT 'export'), logical messages in pgoutput (resync watermarks) and `pg_lsn` casts.
MIN_VERSION = 150000
FAILOVER_MIN_VERSION = 170000
# Output plugins newer minor releases allow without being told (`output_plugin_libraries`).
DEFAULT_ALLOWED_PLUGINS = ("pgoutput", "test_decoding")

_FACTS_QUERY = """
SELECT current_setting('server_version_num')::int,
       current_setting('server_version'),
       current_setting('wal_level'),
       (SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'),
       (SELECT setting FROM pg_settings WHERE name = 'synchronized_standby_slots'),
       pg_is_in_recovery(),
       ARRAY(SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical'),
       ARRAY(SELECT slot_name::text FROM pg_replication_slots
             WHERE slot_type = 'physical' AND active)
"""


@dataclass(frozen=True, slots=True)
class ServerFacts:
    version: int  # server_version_num, e.g. 150018
    version_text: str
    wal_level: str
    # None: the server has no such setting (older minors load any plugin).
    allowed_plugins: tuple[str, ...] | None
    # The physical slots whose standbys must have WAL before logical walsenders send it.
    synchronized_standby_slots: tuple[str, ...]
    in_recovery: bool
    physical_slots: frozenset[str]
    # Physical slots a standby streams from now.
    active_physical_slots: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Finding:
    level: Literal["error", "warning"]
    message: str
    # The statements that fix it, to run as a superuser on the server named.
    fix: tuple[str, ...] = ()
    # A warning that holds up every logical stream: `cdc status` counts it as a problem.
    stalls: bool = False

    def describe(self) -> str:
        if not self.fix:
            return self.message
        return self.message + "\n" + "\n".join(f"    {statement}" for statement in self.fix)


def parse_list(setting: str | None) -> tuple[str, ...]:
    """A list setting as PostgreSQL shows it (`a, b`, elements maybe double-quoted)."""
    if not setting:
        return ()
    items = (item.strip().strip('"').strip() for item in setting.split(","))
    return tuple(item for item in items if item)


async def server_facts(conn: Conn) -> ServerFacts:
    row = await (await conn.execute(_FACTS_QUERY)).fetchone()
    assert row is not None
    version, text, wal_level, plugins, standby_slots, in_recovery, physical, active = row
    return ServerFacts(
        version=int(version),
        version_text=str(text).split()[0],
        wal_level=str(wal_level),
        allowed_plugins=None if plugins is None else parse_list(plugins),
        synchronized_standby_slots=parse_list(standby_slots),
        in_recovery=bool(in_recovery),
        physical_slots=frozenset(physical or ()),
        active_physical_slots=frozenset(active or ()),
    )


def assess(facts: ServerFacts, source: SourceConfig) -> list[Finding]:
    """Everything about the server that stands between the configuration and a stream."""
    findings = [
        *_version(facts),
        *_wal_level(facts),
        *_plugin(facts, source.plugin),
        *_failover(facts, source),
        *(_standby_slots(facts) if source.failover else []),
    ]
    return findings


def _version(facts: ServerFacts) -> list[Finding]:
    if facts.version >= MIN_VERSION:
        return []
    return [
        Finding(
            "error",
            f"the source server runs PostgreSQL {facts.version_text}; wal2vec needs 15 or newer "
            "(slot snapshots, logical messages in the stream): upgrade the server",
        )
    ]


def _wal_level(facts: ServerFacts) -> list[Finding]:
    if facts.wal_level == "logical":
        return []
    return [
        Finding(
            "error",
            f"the source server has wal_level = {facts.wal_level}; logical replication needs "
            "wal_level = logical. Run, then restart PostgreSQL:",
            ("ALTER SYSTEM SET wal_level = logical;",),
        )
    ]


def _plugin(facts: ServerFacts, plugin: str) -> list[Finding]:
    allowed = facts.allowed_plugins
    if allowed is None or plugin in allowed:
        return []
    wanted = ", ".join([*allowed, plugin])  # a list setting: unquoted, or it is one element
    return [
        Finding(
            "error",
            f"the source server does not allow the output plugin {plugin} "
            f"(output_plugin_libraries = {', '.join(allowed) or 'empty'}): as a superuser, run",
            (
                f"ALTER SYSTEM SET output_plugin_libraries = {wanted};",
                "SELECT pg_reload_conf();",
            ),
        )
    ]


def _failover(facts: ServerFacts, source: SourceConfig) -> list[Finding]:
    if not source.failover:
        return []
    if facts.version < FAILOVER_MIN_VERSION:
        return [
            Finding(
                "error",
                f"source.failover needs failover slots, which PostgreSQL {facts.version_text} "
                "lacks (17 or newer has them): set source.failover: false, or upgrade",
            )
        ]
    findings = []
    if not facts.synchronized_standby_slots and not facts.in_recovery:
        findings.append(
            Finding(
                "warning",
                "source.failover: the primary's synchronized_standby_slots is empty, so wal2vec "
                "may receive changes the standby does not have yet; after a failover the slot "
                "there could stand past WAL the standby never got. Name the standby's physical "
                "slot on the primary:",
                (
                    "ALTER SYSTEM SET synchronized_standby_slots = '<standby slot>';",
                    "SELECT pg_reload_conf();",
                ),
            )
        )
    if len(dsn_hosts(source.dsn)) < 2:
        findings.append(
            Finding(
                "warning",
                "source.failover: source.dsn names one host, so after a failover `cdc run` "
                "finds the new primary only if that name moves to it. Name both servers, e.g. "
                "host=primary,standby target_session_attrs=read-write",
            )
        )
    return findings


def _standby_slots(facts: ServerFacts) -> list[Finding]:
    if facts.in_recovery:
        return []
    named = facts.synchronized_standby_slots
    missing = [s for s in named if s not in facts.physical_slots]
    idle = [s for s in named if s in facts.physical_slots and s not in facts.active_physical_slots]
    findings = [*_missing_standby_slots(missing)]
    if idle:
        findings.append(
            Finding(
                "warning",
                f"synchronized_standby_slots names {', '.join(idle)}, but no standby streams "
                "from it now: failover slots here wait until that standby is back, so wal2vec "
                "receives nothing meanwhile. Bring the standby back, or, to stream without it, "
                "take its slot out of synchronized_standby_slots",
                stalls=True,
            )
        )
    return findings


def _missing_standby_slots(missing: list[str]) -> list[Finding]:
    if not missing:
        return []
    return [
        Finding(
            "warning",
            f"synchronized_standby_slots names {', '.join(missing)}, which this server does not "
            "have: failover slots here wait for it, so wal2vec receives nothing (a promoted "
            "standby inherits its primary's setting). Name this server's standbys' slots, or "
            "clear it:",
            ("ALTER SYSTEM RESET synchronized_standby_slots;", "SELECT pg_reload_conf();"),
            stalls=True,
        )
    ]


def failover_requirements(standby_slot: str = "<standby slot>") -> list[str]:
    """What the primary and its standby need for a failover slot to survive a promotion."""
    return [
        "-- source.failover: the slot is synchronised to a physical standby (PostgreSQL 17+).",
        "-- On the primary:",
        f"--   ALTER SYSTEM SET synchronized_standby_slots = '{standby_slot}';",
        "--   SELECT pg_reload_conf();",
        "-- On the standby (streaming from the primary through that physical slot):",
        "--   ALTER SYSTEM SET sync_replication_slots = on;",
        "--   ALTER SYSTEM SET hot_standby_feedback = on;",
        f"--   primary_slot_name = '{standby_slot}', and a dbname=... in primary_conninfo",
        "--   SELECT pg_reload_conf();",
        "-- After a promotion, clear the new primary's inherited synchronized_standby_slots",
        "-- (or name its own standbys' slots): ALTER SYSTEM RESET synchronized_standby_slots;",
    ]


def raise_for(findings: Sequence[Finding]) -> None:
    """Raise the errors among `findings` as one `ConfigError`: each is the configuration's or
    the server's to fix, not something waiting would mend."""
    errors = [finding for finding in findings if finding.level == "error"]
    if errors:
        raise ConfigError("\n".join(finding.describe() for finding in errors))


def check_primary(facts: ServerFacts, source: SourceConfig) -> None:
    """A standby cannot host wal2vec's slot writes (snapshot, watermarks): wait for a primary."""
    if facts.in_recovery:
        hint = (
            "add target_session_attrs=read-write to source.dsn so the primary is chosen"
            if len(dsn_hosts(source.dsn)) > 1
            else "point source.dsn at the primary"
        )
        raise SourceUnavailable(f"the source server is a standby (in recovery): {hint}")


@dataclass(frozen=True, slots=True)
class StandbyFlush:
    """How far the standbys a failover slot waits for have flushed WAL."""

    # None when no standby is waited for (synchronized_standby_slots empty or absent).
    flushed: Lsn | None
    # A slot the setting names is missing or has flushed nothing yet (its standby never
    # connected): nothing may be released.
    blocked: bool = False


# One round trip per look (it runs after every batch with a failover slot): the setting's
# names, split as `parse_list` splits them, joined to their physical slots.
_STANDBY_FLUSH_QUERY = """
WITH named AS (
    SELECT btrim(item, ' "') AS name
    FROM regexp_split_to_table(
        coalesce(current_setting('synchronized_standby_slots', true), ''), ','
    ) AS item
    WHERE btrim(item, ' "') <> ''
)
SELECT count(*), count(s.restart_lsn), min(s.restart_lsn)::text
FROM named LEFT JOIN pg_replication_slots AS s
  ON s.slot_name = named.name AND s.slot_type = 'physical'
"""


async def standby_flush(conn: Conn) -> StandbyFlush:
    """The least WAL position the primary's synchronized standby slots have flushed."""
    row = await (await conn.execute(_STANDBY_FLUSH_QUERY)).fetchone()
    assert row is not None  # an aggregate always yields one row
    named, flushed, least = row
    if not named:
        return StandbyFlush(None)
    if flushed < named or least is None:
        return StandbyFlush(None, blocked=True)
    return StandbyFlush(Lsn.parse(least))


async def wal_position(conn: Conn) -> Lsn:
    """The server's WAL insert position: past every commit made before the call."""
    row = await (await conn.execute("SELECT pg_current_wal_insert_lsn()::text")).fetchone()
    assert row is not None
    return Lsn.parse(row[0])
