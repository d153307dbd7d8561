"""Connections: the one connection type every module annotates with, and how one is opened.

Sink, source and command code all take a `Conn`; only `cdc.replication.stream` opens the
replication connection, which speaks another protocol.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection

from cdc.dsn import redact_dsn
from cdc.errors import SourceUnavailable

Conn = AsyncConnection[tuple[Any, ...]]


async def connect(dsn: str, role: str, **kwargs: Any) -> Conn:
    """Open a connection or raise `SourceUnavailable` naming the (redacted) DSN."""
    try:
        return await AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
        raise SourceUnavailable(
            f"cannot connect to the {role} at {redact_dsn(dsn)}: {detail}"
        ) from None


# The sessions holding the advisory lock keyed `hashtextextended(%s, 0)` in this database, as
# (pid, application_name): pg_locks splits a bigint key into two oids. A subquery to select
# from, with the key as its one parameter.
ADVISORY_LOCK_HOLDERS = """
SELECT a.pid, a.application_name
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
CROSS JOIN (SELECT hashtextextended(%s, 0) AS h) k
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = ((k.h >> 32) & 4294967295)::oid AND l.objid = (k.h & 4294967295)::oid
"""
