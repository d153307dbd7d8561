"""Logging: human-readable lines by default, JSON lines on request; never a secret.

JSON lines carry one event each: time, level, logger, message, and the event's fields: what a
log call passes as `extra` (`table`, `lsn`, `rows`, `count`, ...) and what is bound for the
whole run (`slot`). Every string goes through `scrub` first: passwords in connection strings,
API keys and bearer tokens never reach the output, whatever a message or an error quotes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

# Attributes every LogRecord has: anything else on a record was passed as `extra` or bound.
_RECORD_ATTRIBUTES = frozenset(
    [*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"]
)
_SECRETS = (
    # postgresql://user:secret@host, https://user:secret@host
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), r"\1***@"),
    # password=secret in a libpq keyword DSN; api_key: secret, "api_key": "secret"
    (
        re.compile(r"""((?:password|passwd|api[_-]?key)["']?\s*[=:]\s*["']?)[^\s"',;]+""", re.I),
        r"\1***",
    ),
    (re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1***"),
    # OpenAI-style keys (sk-..., sk-proj-...)
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
)


def scrub(text: str) -> str:
    """`text` with anything that looks like a password, key or token replaced by ***."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def event_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call added to its record (`extra`, bound context), scrubbed."""
    fields: dict[str, object] = {}
    for name, value in record.__dict__.items():
        if name in _RECORD_ATTRIBUTES or name.startswith("_"):
            continue
        fields[name] = _plain(value)
    return fields


def _plain(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for name, value in event_fields(record).items():
            event.setdefault(name, value)
        if record.exc_info:
            event["error"] = scrub(self.formatException(record.exc_info))
        return json.dumps(event, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class ContextFilter(logging.Filter):
    """Adds fixed fields to every record a handler emits, unless the call set them itself."""

    def __init__(self, fields: Mapping[str, object]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def bind_context(**fields: object) -> Callable[[], None]:
    """Add `fields` to every event the root logger's handlers emit; call the result to stop."""
    context = ContextFilter(fields)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(context)

    def unbind() -> None:
        for handler in handlers:
            handler.removeFilter(context)

    return unbind


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries log request lines at INFO; keep them out unless debugging.
    for noisy in ("httpx", "httpx2", "openai", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
