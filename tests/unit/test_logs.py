"""Logs: JSON lines with the event's fields, human-readable text, and never a secret."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from cdc.logs import JsonFormatter, TextFormatter, bind_context, configure_logging, scrub

SECRETS = [
    "hunter2",
    "sk-proj-abcdef1234567890",
    "tok3n.value-xyz",
    "s3cr3t-kw",
]


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("cdc.pipeline", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(rec, name, value)
    return rec


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


def test_json_line_has_the_event_and_its_fields() -> None:
    line = JsonFormatter().format(
        record("applied %d transactions", 3, table="public.articles", lsn="0/16B3748", rows=42)
    )
    assert "\n" not in line
    event = json.loads(line)
    assert event["message"] == "applied 3 transactions"
    assert event["level"] == "info"
    assert event["logger"] == "cdc.pipeline"
    assert event["time"].endswith("+00:00")
    assert (event["table"], event["lsn"], event["rows"]) == ("public.articles", "0/16B3748", 42)


def test_json_carries_exceptions_on_one_line() -> None:
    try:
        raise RuntimeError("boom with postgresql://u:hunter2@db/app")
    except RuntimeError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    event = json.loads(line)
    assert "RuntimeError: boom" in event["error"]
    assert "hunter2" not in line


@pytest.mark.parametrize(
    "text",
    [
        "cannot connect to the source at postgresql://cdc:hunter2@db:5432/app: refused",
        "dsn host=db user=cdc password=hunter2 dbname=app",
        "retrying with api_key=sk-proj-abcdef1234567890 (attempt 2)",
        "the service said: Incorrect API key provided: sk-proj-abcdef1234567890",
        "Authorization: Bearer tok3n.value-xyz",
        '{"api_key": "s3cr3t-kw", "model": "m"}',
        "PASSWORD = 's3cr3t-kw'",
    ],
)
def test_secrets_are_scrubbed_wherever_they_appear(text: str) -> None:
    cleaned = scrub(text)
    assert "***" in cleaned
    for secret in SECRETS:
        assert secret not in cleaned
    for formatter in (JsonFormatter(), TextFormatter()):
        out = formatter.format(record("%s", text, detail=text))
        for secret in SECRETS:
            assert secret not in out


def test_scrub_leaves_ordinary_text_alone() -> None:
    text = "password authentication failed for user cdc; see https://example.com/docs"
    assert scrub(text) == text


def test_text_is_human_readable() -> None:
    line = TextFormatter().format(record("streaming slot %s from %s", "wal2vec", "0/1"))
    assert " INFO    cdc.pipeline: streaming slot wal2vec from 0/1" in line


def test_bound_context_reaches_every_event_until_unbound(
    root_handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("cdc.test")
    unbind = bind_context(slot="wal2vec_a")
    log.info("one")
    log.info("two", extra={"slot": "explicit", "count": 2})
    unbind()
    log.info("three")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["message"] for e in events] == ["one", "two", "three"]
    assert events[0]["slot"] == "wal2vec_a"
    assert (events[1]["slot"], events[1]["count"]) == ("explicit", 2)
    assert "slot" not in events[2]


def test_configure_logging_text_by_default_and_quiet_clients(
    root_handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "text")
    logging.getLogger("cdc.test").info("hello %s", "there")
    logging.getLogger("httpx").info("HTTP Request: POST ...")
    err = capsys.readouterr().err
    assert err.endswith("INFO    cdc.test: hello there\n")
    assert "HTTP Request" not in err
