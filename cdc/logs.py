"""Logging: human-readable lines by default, JSON lines on request; never a secret.

JSON lines carry one event each: time, level, logger, message, and the event's fields: what a
log call passes as `extra` (`table`, `lsn`, `rows`, `count`, ...) and what is bound for the
whole run (`slot`). Every string goes through `scrub` first: passwords in connection strings,
API keys and bearer tokens never reach the output, whatever a message or an error quotes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TextIO

# Attributes every LogRecord has: anything else on a record was passed as `extra` or bound.
_RECORD_ATTRIBUTES = frozenset(
    [*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"]
)
# Names under which a secret is given: `password=...`, `"api_key": "..."`, `PGPASSWORD=...`.
_SECRET_NAMES = r"(?:password|passwd|api[_-]?key|apikey|access[_-]?token|client[_-]?secret)"
# A value as it may be written after such a name: quoted (with backslash escapes) or bare.
_QUOTED_OR_BARE = r"""(?:'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"|['"]?[^\s"',;&]+)"""
_SECRETS = (
    # postgresql://user:secret@host, https://user:secret@host
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), r"\1***@"),
    # postgresql://host/db?sslmode=require&password=secret: up to the next parameter
    (re.compile(rf"([?&]{_SECRET_NAMES}=)[^&#\s]*", re.I), r"\1***"),
    # password=secret or password='a b\'c' in a libpq keyword DSN; api_key: secret,
    # "api_key": "secret", PGPASSWORD=secret
    (re.compile(rf"""({_SECRET_NAMES}["']?\s*[=:]\s*){_QUOTED_OR_BARE}""", re.I), r"\1***"),
    (re.compile(r"\b((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1***"),
    # OpenAI-style keys (sk-..., sk-proj-...)
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
)
# Known secret values shorter than this are left to the patterns: replacing every "abc" in
# every message would garble the output and hide nothing worth hiding.
MIN_SECRET_LENGTH = 4


def scrub(text: str) -> str:
    """`text` with anything that looks like a password, key or token replaced by ***."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class Scrubber:
    """`scrub`'s patterns plus the literal secret values this process knows (the configured
    passwords and API keys, PGPASSWORD, OPENAI_API_KEY...), however they are spelled out: as
    is, URL-encoded, JSON- or repr-escaped. Calling it scrubs a text; it never fails."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)
        self._literal = _literal_pattern(self.secrets)

    def with_secrets(self, secrets: Iterable[str]) -> Scrubber:
        return Scrubber([*self.secrets, *secrets])

    def __call__(self, text: str) -> str:
        if self._literal is not None:
            text = self._literal.sub("***", text)
        return scrub(text)


def _literal_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    spellings: set[str] = set()
    for secret in secrets:
        spellings |= {
            secret,
            urllib.parse.quote(secret, safe=""),
            urllib.parse.quote_plus(secret, safe=""),
            json.dumps(secret)[1:-1],
            repr(secret)[1:-1],
            # quoted in a libpq keyword DSN: password='a b\'c'
            secret.replace("\\", "\\\\").replace("'", "\\'"),
        }
    if not spellings:
        return None
    # Longest first, so a secret containing another is replaced whole; whole words only, so a
    # password "postgres" does not turn postgresql:// into ***ql://.
    alternatives = sorted(spellings, key=len, reverse=True)
    return re.compile("|".join(_whole(spelling) for spelling in alternatives))


def _whole(spelling: str) -> str:
    before = r"(?<!\w)" if re.match(r"\w", spelling[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", spelling[-1]) else ""
    return before + re.escape(spelling) + after


class ScrubbedStream(io.TextIOBase):
    """A text stream that scrubs everything written to it before passing it on: what the CLI
    puts in place of stdout and stderr, so no command's output can carry a secret."""

    def __init__(self, target: TextIO, scrubber: Scrubber) -> None:
        super().__init__()
        self._target = target
        self._scrubber = scrubber

    def write(self, text: str) -> int:
        self._target.write(self._scrubber(text))
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._target.encoding


@contextlib.contextmanager
def scrubbed_output(scrubber: Scrubber) -> Iterator[None]:
    """Scrub everything written to sys.stdout and sys.stderr while the block runs."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = ScrubbedStream(stdout, scrubber)
    sys.stderr = ScrubbedStream(stderr, scrubber)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def event_fields(
    record: logging.LogRecord, scrubber: Callable[[str], str] = scrub
) -> dict[str, object]:
    """The fields a log call added to its record (`extra`, bound context), scrubbed."""
    fields: dict[str, object] = {}
    for name, value in record.__dict__.items():
        if name in _RECORD_ATTRIBUTES or name.startswith("_"):
            continue
        fields[name] = _plain(value, scrubber)
    return fields


def _plain(value: object, scrubber: Callable[[str], str]) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrubber(str(value))


class JsonFormatter(logging.Formatter):
    def __init__(self, scrubber: Callable[[str], str] = scrub) -> None:
        super().__init__()
        self.scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.scrubber(record.getMessage()),
        }
        for name, value in event_fields(record, self.scrubber).items():
            event.setdefault(name, value)
        if record.exc_info:
            event["error"] = self.scrubber(self.formatException(record.exc_info))
        return json.dumps(event, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, scrubber: Callable[[str], str] = scrub) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        return self.scrubber(super().format(record))


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


def configure_logging(level: str, fmt: str, scrubber: Callable[[str], str] = scrub) -> None:
    """Log lines to stderr, each scrubbed by `scrubber` (by default, `scrub`'s patterns)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(scrubber) if fmt == "json" else TextFormatter(scrubber))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries log request lines at INFO; keep them out unless debugging.
    for noisy in ("httpx", "httpx2", "openai", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
