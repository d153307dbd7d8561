"""What `cdc setup` and `cdc run` require of the source server: the pure rules."""

from __future__ import annotations

import dataclasses

import pytest

from cdc.config import SourceConfig
from cdc.errors import ConfigError
from cdc.source.server import (
    ServerFacts,
    assess,
    failover_requirements,
    parse_list,
    raise_for,
)

PG18 = ServerFacts(
    version=180006,
    version_text="18.6",
    wal_level="logical",
    allowed_plugins=("pgoutput", "test_decoding"),
    synchronized_standby_slots=(),
    in_recovery=False,
    physical_slots=frozenset(),
)
PG15_OLD_MINOR = dataclasses.replace(
    PG18, version=150004, version_text="15.4", allowed_plugins=None
)


def source(**values: object) -> SourceConfig:
    return SourceConfig.model_validate({"dsn": "host=/tmp dbname=app", **values})


def test_a_current_server_with_pgoutput_has_nothing_to_say() -> None:
    assert assess(PG18, source()) == []
    assert assess(PG15_OLD_MINOR, source(plugin="wal2json")) == []


def test_a_server_older_than_15_is_refused_with_its_version() -> None:
    old = dataclasses.replace(PG18, version=140011, version_text="14.11")
    [finding] = assess(old, source())
    assert finding.level == "error"
    assert "14.11" in finding.message and "15 or newer" in finding.message


def test_wal_level_must_be_logical() -> None:
    [finding] = assess(dataclasses.replace(PG18, wal_level="replica"), source())
    assert finding.level == "error"
    assert finding.fix == ("ALTER SYSTEM SET wal_level = logical;",)


def test_a_plugin_outside_output_plugin_libraries_gets_the_exact_statement() -> None:
    [finding] = assess(PG18, source(plugin="wal2json"))
    assert finding.level == "error"
    # An unquoted list: quoted, PostgreSQL would take it as one library name.
    assert finding.fix == (
        "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json;",
        "SELECT pg_reload_conf();",
    )
    with pytest.raises(ConfigError, match="output_plugin_libraries = pgoutput, test_decoding"):
        raise_for([finding])


def test_an_allowed_plugin_passes() -> None:
    allowed = dataclasses.replace(PG18, allowed_plugins=("pgoutput", "test_decoding", "wal2json"))
    assert assess(allowed, source(plugin="wal2json")) == []


def test_failover_needs_postgresql_17() -> None:
    [finding] = assess(PG15_OLD_MINOR, source(failover=True))
    assert finding.level == "error" and "17 or newer" in finding.message


def test_failover_warns_about_what_weakens_it() -> None:
    findings = assess(PG18, source(failover=True))
    assert [f.level for f in findings] == ["warning", "warning"]
    assert "synchronized_standby_slots is empty" in findings[0].message
    assert "names one host" in findings[1].message
    raise_for(findings)  # warnings never stop anything


def test_failover_with_a_standby_slot_and_two_hosts_is_quiet() -> None:
    ready = dataclasses.replace(
        PG18,
        synchronized_standby_slots=("sb1",),
        physical_slots=frozenset({"sb1"}),
        active_physical_slots=frozenset({"sb1"}),
    )
    dsn = "host=a,b port=5432,5433 dbname=app target_session_attrs=read-write"
    assert assess(ready, source(failover=True, dsn=dsn)) == []


def test_a_promoted_standby_holding_its_primarys_standby_slots_is_a_stall() -> None:
    promoted = dataclasses.replace(PG18, synchronized_standby_slots=("sb1",))
    dsn = "host=a,b dbname=app target_session_attrs=read-write"
    [finding] = assess(promoted, source(failover=True, dsn=dsn))
    assert finding.level == "warning" and finding.stalls
    assert "sb1" in finding.message
    assert finding.fix[0] == "ALTER SYSTEM RESET synchronized_standby_slots;"
    # On a standby the setting is its primary's business.
    assert assess(dataclasses.replace(promoted, in_recovery=True), source(failover=True)) == [
        f for f in assess(PG18, source(failover=True)) if "one host" in f.message
    ]
    # Only failover slots wait for standbys: without source.failover it is not ours to say.
    assert assess(promoted, source()) == []


@pytest.mark.parametrize(
    ("shown", "items"),
    [
        ("pgoutput, test_decoding", ("pgoutput", "test_decoding")),
        ('"pgoutput, wal2json"', ("pgoutput", "wal2json")),
        ("sb1", ("sb1",)),
        ("", ()),
        (None, ()),
    ],
)
def test_list_settings_read_as_postgresql_shows_them(
    shown: str | None, items: tuple[str, ...]
) -> None:
    assert parse_list(shown) == items


def test_the_failover_requirements_name_every_setting() -> None:
    text = "\n".join(failover_requirements("sb1"))
    for setting in (
        "synchronized_standby_slots = 'sb1'",
        "sync_replication_slots = on",
        "hot_standby_feedback = on",
        "primary_slot_name = 'sb1'",
        "dbname",
    ):
        assert setting in text
    assert all(line.startswith("--") for line in failover_requirements())


def test_a_standby_slot_no_standby_streams_from_holds_the_stream() -> None:
    down = dataclasses.replace(
        PG18, synchronized_standby_slots=("sb1",), physical_slots=frozenset({"sb1"})
    )
    dsn = "host=a,b dbname=app target_session_attrs=read-write"
    [finding] = assess(down, source(failover=True, dsn=dsn))
    assert finding.level == "warning" and finding.stalls
    assert "sb1" in finding.message and "no standby streams from it" in finding.message
    up = dataclasses.replace(down, active_physical_slots=frozenset({"sb1"}))
    assert assess(up, source(failover=True, dsn=dsn)) == []
