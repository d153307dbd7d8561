"""Which configured tables an operator command works on (`--table T`, or all of them)."""

from __future__ import annotations

from cdc.config import Settings, TableConfig
from cdc.errors import ConfigError


def selected_tables(settings: Settings, table: str | None) -> list[TableConfig]:
    if table is None:
        return list(settings.tables)
    wanted = table if "." in table else f"public.{table}"
    chosen = [config for config in settings.tables if config.table == wanted]
    if not chosen:
        configured = ", ".join(config.table for config in settings.tables)
        raise ConfigError(
            f"--table {table}: not a configured table (tables[].table); configured: {configured}"
        )
    return chosen
