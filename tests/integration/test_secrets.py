"""Secrets in every form a user may write them never reach the output of any command."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.harness import CdcProcess, Deployment, free_port, scrape, wait_until
from tests.pg import PgServer

URI_SECRET = "S3cret-in-uri"
QUERY_SECRET = "S3cret-in-query"
KEYWORD_SECRET = r"a b\'c\\d S3cret-kw"  # as written in the DSN: spaces, \' and \\
KEYWORD_PLAIN = "a b'c\\d S3cret-kw"  # the password libpq reads from it
ENV_SECRET = "S3cret-in-PGPASSWORD"


def _dsn_forms(socket_dir: str, database: str) -> dict[str, tuple[str, list[str]]]:
    """DSNs naming a role that does not exist (the test server trusts local connections, so a
    wrong password alone would not fail), each with the password texts that must not show."""
    return {
        "uri user part": (
            f"postgresql://nobody:{URI_SECRET}@/{database}?host={socket_dir}",
            [URI_SECRET],
        ),
        "uri query": (
            f"postgresql:///{database}?host={socket_dir}&user=nobody"
            f"&password={QUERY_SECRET}&sslmode=disable",
            [QUERY_SECRET],
        ),
        "keyword quoted": (
            f"host={socket_dir} dbname={database} user=nobody password='{KEYWORD_SECRET}'",
            [KEYWORD_SECRET, KEYWORD_PLAIN, "S3cret-kw", "b\\'c"],
        ),
    }


FORMS = ["uri user part", "uri query", "keyword quoted"]


@pytest.mark.parametrize(
    ("form", "command"),
    [
        *[(form, ["status"]) for form in FORMS],
        *[(form, ["status", "--json"]) for form in FORMS],
        ("uri query", ["setup"]),
        # `run` retries a few times, logging each failure, before it exits 3.
        ("keyword quoted", ["run"]),
    ],
)
def test_a_wrong_login_exits_3_without_printing_the_password(
    deployment: Deployment, pg_server: PgServer, form: str, command: list[str]
) -> None:
    database = conninfo_to_dict(deployment.dsn)["dbname"]
    deployment.dsn, secrets = _dsn_forms(pg_server.socket_dir, database)[form]
    result = deployment.cli(*command, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "cannot connect to the source" in result.stderr
    assert "Traceback" not in output
    for secret in secrets:
        assert secret not in output, f"{secret!r} printed:\n{output}"


def test_pgpassword_and_api_keys_from_the_environment_are_never_printed(
    deployment: Deployment, pg_server: PgServer
) -> None:
    # A DSN libpq cannot even parse: its error quotes a fragment of the DSN.
    deployment.dsn = f"host={pg_server.socket_dir} user=nobody password=two {ENV_SECRET}"
    deployment.write_config()
    env = {
        **deployment.env(),
        "PGPASSWORD": ENV_SECRET,
        "OPENAI_API_KEY": "sk-env-openai-key-S3cret",
        "AZURE_OPENAI_API_KEY": "azure-env-key-S3cret",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cdc", "status", "--config", str(deployment.config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "source.dsn" in result.stderr
    assert "Traceback" not in output
    for secret in (ENV_SECRET, "S3cret"):
        assert secret not in output


def test_a_running_streamer_prints_no_password_in_logs_status_or_metrics(
    deployment: Deployment, pg_server: PgServer
) -> None:
    # Accepted (local connections are trusted), so the password travels through a whole run.
    database = conninfo_to_dict(deployment.dsn)["dbname"]
    deployment.dsn = (
        f"host={pg_server.socket_dir} dbname={database} user=postgres password='{KEYWORD_SECRET}'"
    )
    port = free_port()
    deployment.extra = {"metrics": {"port": port}, "log": {"level": "debug"}}
    process: CdcProcess = deployment.start()
    try:
        deployment.wait_ready()
        deployment.execute("INSERT INTO articles (id, title) VALUES (1, 'hello')")
        deployment.wait_caught_up()
        wait_until(lambda: scrape(port, "cdc_up") == 1.0, 30, "cdc_up")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        status = deployment.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["vectors"] == {"public.articles": 1}
    finally:
        assert process.stop() == 0, process.output
    for text in (metrics, status.stdout + status.stderr, process.output):
        assert "S3cret-kw" not in text
        assert "sk-test-secret-key-do-not-print" not in text
