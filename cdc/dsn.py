"""Connection strings: checked when the configuration loads, and never shown with a password."""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cdc.errors import ConfigError
from cdc.logs import Scrubber


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, fit for logs and error messages: in the URI's user
    part or query, or as a keyword (quoted or not)."""
    return Scrubber(filter(None, [dsn_password(dsn)]))(dsn)


def dsn_password(dsn: str | None) -> str | None:
    """The password a DSN (URI or keywords) carries, as libpq reads it, or None."""
    if not dsn:
        return None
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(password) if password else None


def dsn_hosts(dsn: str | None) -> list[str]:
    """The hosts a DSN names (libpq multi-host: `host=a,b` or `postgresql://a,b/db`); one
    empty name for a DSN that leaves the host to libpq's default."""
    try:
        host = conninfo_to_dict(dsn or "").get("host")
    except psycopg.ProgrammingError:
        return [""]
    return str(host).split(",") if host else [""]


def check_dsn(key: str, dsn: str | None) -> None:
    """A DSN libpq cannot parse is a configuration error; its message must not quote the DSN,
    which libpq's does (`missing "=" after "<a piece of the password>"`)."""
    if dsn is None:
        return
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if not detail.startswith(("invalid connection option", "invalid URI query parameter")):
            detail = re.sub(r'"[^"]*"', '"..."', detail)
        raise ConfigError(
            f"{key} is not a valid connection string ({detail}): write it as a URI "
            "(postgresql://user@host/db) or as keywords (host=... dbname=...), quoting values "
            "with spaces in single quotes and escaping ' and \\ with a backslash"
        ) from None
