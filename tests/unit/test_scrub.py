"""The one scrubber every log line and every CLI output passes through: patterns for secrets
in every form a user writes them, and the literal secret values the process knows."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from cdc.config import known_secrets, load_config
from cdc.dsn import dsn_password, redact_dsn
from cdc.errors import ConfigError
from cdc.logs import JsonFormatter, Scrubber, TextFormatter, scrub, scrubbed_output

KEYWORD_DSN = r"host=db dbname=app user=cdc password='a b\'c\\d s3cr3t' sslmode=require"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://u:s3cr3t@h/db", "s3cr3t"),
        ("postgresql://u:s3%40cr3t@h:5432/db?sslmode=require", "s3%40cr3t"),
        ("postgresql://h/db?password=s3cr3t&sslmode=require", "s3cr3t"),
        ("postgresql://h/db?sslmode=require&password=s3cr3t", "s3cr3t"),
        ("postgresql://h/db?PASSWORD=s3cr3t", "s3cr3t"),
        ("host=h password=s3cr3t dbname=app", "s3cr3t"),
        ("host=h password = 's3cr3t with spaces' dbname=app", "with spaces"),
        (KEYWORD_DSN, "s3cr3t"),
        (KEYWORD_DSN, r"b\'c"),
        ('host=h password="s3cr3t x"', "s3cr3t"),
        ("password='unterminated s3cr3t", "unterminated"),
        ("PGPASSWORD=s3cr3t psql", "s3cr3t"),
        ('{"api_key": "s3cr3t value"}', "s3cr3t"),
        ("api-key: s3cr3t", "s3cr3t"),
        ("Authorization: Bearer tok3n.s3cr3t-xyz", "s3cr3t"),
        ("Authorization: Basic dXNlcjpzM2NyM3Q=", "dXNlcjpzM2NyM3Q"),
        ("Incorrect API key provided: sk-proj-s3cr3tabcdef1234", "s3cr3t"),
    ],
)
def test_patterns_catch_secrets_in_every_form(text: str, secret: str) -> None:
    cleaned = scrub(text)
    assert secret not in cleaned
    assert "***" in cleaned


def test_patterns_keep_what_is_around_the_secret() -> None:
    assert scrub("postgresql://h/db?password=x1&sslmode=require") == (
        "postgresql://h/db?password=***&sslmode=require"
    )
    assert scrub(KEYWORD_DSN) == "host=db dbname=app user=cdc password=*** sslmode=require"
    assert scrub("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_ordinary_text_is_left_alone() -> None:
    for text in (
        "password authentication failed for user cdc",
        'FATAL:  role "nobody" does not exist',
        "embedded 40 rows of public.articles in 2 requests",
    ):
        assert scrub(text) == text
        assert Scrubber(["hunter2"])(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "the key hunter2-Key/xyz was refused",  # bare, with no name before it
        "connecting with hunter2-Key/xyz",
        "token=hunter2-Key%2Fxyz",
        "message: 'hunter2-Key/xyz'",
        "url: https://host/?k=hunter2-Key/xyz#frag",
    ],
)
def test_known_values_are_scrubbed_however_they_appear(text: str) -> None:
    cleaned = Scrubber(["hunter2-Key/xyz"])(text)
    assert "hunter2" not in cleaned and "***" in cleaned


def test_known_values_with_quotes_and_backslashes_in_each_spelling() -> None:
    secret = "a b'c\\d q"
    scrubber = Scrubber([secret])
    for spelling in (secret, json.dumps(secret), repr(secret), "a%20b%27c%5Cd%20q", r"a b\'c\\d q"):
        assert "b'c" not in scrubber(f"x {spelling} y") and "c\\d" not in scrubber(spelling)


def test_known_values_are_whole_words_and_short_ones_are_left_to_patterns() -> None:
    scrubber = Scrubber(["postgres", "abc"])
    assert scrubber("postgresql://postgres@h/db") == "postgresql://***@h/db"
    assert scrubber("abc def") == "abc def"  # too short to hide without garbling everything
    assert scrubber("password=abc") == "password=***"


def test_redact_dsn_in_each_form() -> None:
    assert redact_dsn("postgresql://cdc:secret@db/app") == "postgresql://cdc:***@db/app"
    assert redact_dsn("postgresql://db/app?password=secret&sslmode=require") == (
        "postgresql://db/app?password=***&sslmode=require"
    )
    assert "s3cr3t" not in redact_dsn(KEYWORD_DSN)
    assert redact_dsn("postgresql://cdc@db/app") == "postgresql://cdc@db/app"


def test_dsn_password_reads_what_libpq_reads() -> None:
    assert dsn_password(KEYWORD_DSN) == "a b'c\\d s3cr3t"
    assert dsn_password("postgresql://u:p%40ss@h/db") == "p@ss"
    assert dsn_password("postgresql://h/db?password=x") == "x"
    assert dsn_password("postgresql://h/db") is None
    assert dsn_password("password='unterminated") is None


def test_known_secrets_come_from_the_environment_and_the_configuration(
    tmp_path: pytest.TempPathFactory,
) -> None:
    environ = {
        "PGPASSWORD": "pg-env-secret",
        "OPENAI_API_KEY": "sk-openai-env",
        "AZURE_OPENAI_API_KEY": "azure-env",
        "CDC_SOURCE__DSN": "postgresql://u:from-env-dsn@h/db",
        "UNRELATED": "not-a-secret",
    }
    assert set(known_secrets(None, environ)) == {
        "pg-env-secret",
        "sk-openai-env",
        "azure-env",
        "from-env-dsn",
    }
    path = tmp_path / "c.yaml"  # type: ignore[operator]
    path.write_text(
        "source: {dsn: \"host=h password='src pw'\"}\n"
        "sink: {dsn: 'postgresql://h/db?password=sink-pw'}\n"
        "embedding: {api_key: configured-key}\n"
        "tables: [{table: articles, columns: [title]}]\n"
    )
    settings = load_config(path, environ={})
    assert set(known_secrets(settings, {})) == {"src pw", "sink-pw", "configured-key"}
    fleet = {"CDC_EMBEDDING__BASE_URL": '["http://gw:url-pw@a/v1", "http://b/v1"]'}
    settings = load_config(path, environ=fleet)
    assert "url-pw" in known_secrets(settings, {})


def test_an_unparsable_dsn_is_a_configuration_error_that_quotes_none_of_it(
    tmp_path: pytest.TempPathFactory,
) -> None:
    path = tmp_path / "c.yaml"  # type: ignore[operator]
    path.write_text(
        'source: {dsn: "host=h password=two words-s3cr3t"}\n'
        "tables: [{table: articles, columns: [title]}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "source.dsn" in caught.value.message
    assert "s3cr3t" not in caught.value.message


def test_formatters_use_the_scrubber_they_are_given() -> None:
    scrubber = Scrubber(["hunter2-value"])
    record = logging.LogRecord(
        "cdc", logging.WARNING, __file__, 1, "got %s", ("hunter2-value",), None
    )
    record.detail = "hunter2-value"
    for formatter in (JsonFormatter(scrubber), TextFormatter(scrubber)):
        assert "hunter2" not in formatter.format(record)


def test_scrubbed_output_covers_stdout_and_stderr_and_restores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with scrubbed_output(Scrubber(["hunter2-value"])):
        print(json.dumps({"dsn": "postgresql://u:hunter2-value@h/db"}))
        print("failed: hunter2-value", file=sys.stderr)
    assert sys.stdout is out and sys.stderr is err
    assert "hunter2" not in out.getvalue() + err.getvalue()
    assert json.loads(out.getvalue()) == {"dsn": "postgresql://u:***@h/db"}
