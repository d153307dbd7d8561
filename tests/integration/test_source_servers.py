"""What `cdc setup`, `cdc run` and `cdc status` say about the source server: its version, the
output plugins it allows and has, and what failover slots need of it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from tests.backends import PG15_PGOUTPUT, PG15_WAL2JSON
from tests.harness import Deployment, wait_until
from tests.pg import PgServer

ALLOW_WAL2JSON = "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json;"


def test_a_plugin_the_server_does_not_allow_is_refused_with_the_statement_to_run(
    deployment: Deployment,
) -> None:
    deployment.plugin = "wal2json"
    result = deployment.cli("setup")
    assert result.returncode == 2, result.stderr
    assert "does not allow the output plugin wal2json" in result.stderr
    assert ALLOW_WAL2JSON in result.stderr and "pg_reload_conf()" in result.stderr
    assert "Traceback" not in result.stderr
    # The script for review carries it too, and wal2json needs no publication.
    script = deployment.cli("setup", "--print-sql")
    assert script.returncode == 0, script.stderr
    assert ALLOW_WAL2JSON in script.stdout
    assert "PUBLICATION" not in script.stdout


@pytest.fixture
def wal2json_allowed(pg_server: PgServer) -> Iterator[None]:
    """The session's PostgreSQL 18 allows wal2json (which it does not have), until the end."""
    pg_server.execute(ALLOW_WAL2JSON.rstrip(";"))
    pg_server.execute("SELECT pg_reload_conf()")
    try:
        wait_until(lambda: "wal2json" in _setting(pg_server), what="the reloaded setting")
        yield
    finally:
        pg_server.execute("ALTER SYSTEM RESET output_plugin_libraries")
        pg_server.execute("SELECT pg_reload_conf()")
        wait_until(lambda: "wal2json" not in _setting(pg_server), what="the setting reset")


def _setting(server: PgServer) -> str:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        row = conn.execute("SHOW output_plugin_libraries").fetchone()
    return str(row[0]) if row else ""


def test_an_allowed_plugin_the_server_lacks_is_named_with_what_to_install(
    deployment: Deployment, wal2json_allowed: None
) -> None:
    deployment.plugin = "wal2json"
    process = deployment.start()
    code = process.process.wait(120)
    assert code == 2, process.output
    assert "has no wal2json output plugin" in process.output
    assert "postgresql-NN-wal2json" in process.output and "Traceback" not in process.output


def test_failover_setup_states_what_the_primary_and_the_standby_need(
    deployment: Deployment,
) -> None:
    deployment.extra["source"] = {"failover": True}
    script = deployment.cli("setup", "--print-sql")
    assert script.returncode == 0, script.stderr
    for setting in (
        "synchronized_standby_slots",
        "sync_replication_slots = on",
        "hot_standby_feedback = on",
        "primary_slot_name",
        "dbname",
    ):
        assert setting in script.stdout, setting
    done = deployment.cli("setup")
    assert done.returncode == 0, done.stderr
    # A primary nothing waits for, and one host to reconnect to: warnings, not errors.
    assert "synchronized_standby_slots is empty" in done.stderr
    assert "names one host" in done.stderr


@pytest.mark.parametrize("backend", [PG15_PGOUTPUT], indirect=True)
def test_failover_slots_on_postgresql_15_are_refused(deployment: Deployment) -> None:
    deployment.extra["source"] = {"failover": True}
    result = deployment.cli("setup")
    assert result.returncode == 2, result.stderr
    assert "source.failover" in result.stderr and "17 or newer" in result.stderr


@pytest.mark.parametrize("backend", [PG15_WAL2JSON], indirect=True)
def test_status_names_the_server_and_the_plugin(deployment: Deployment) -> None:
    process = deployment.start()
    deployment.wait_ready()
    result = deployment.cli("status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["server"].startswith("15.") and report["plugin"] == "wal2json"
    assert "failover" not in report
    text = deployment.cli("status").stdout
    assert f"PostgreSQL {report['server']}, plugin wal2json" in text
    assert process.stop() == 0, process.output
