"""What an embedding service's HTTP errors mean: retry, bisect the inputs, or give up.

Messages name the endpoint's host and never the API key (`scrub`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import openai

from cdc.embedding.answers import describe_body, is_html
from cdc.errors import ConfigError, EmbeddingUnavailable

# Service messages land in logs and the dead-letter table: keep them readable.
_MESSAGE_LIMIT = 500
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
# The service rejected something in the request itself: bisect to find the inputs at fault.
_REJECTION_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True)
class Rejected:
    """The service refused a request because of (some of) its inputs."""

    message: str


class ServiceErrors:
    """Reads one endpoint's HTTP errors for one model."""

    def __init__(self, endpoint: str, model: str, secret: str | None) -> None:
        self._endpoint = endpoint
        self.model = model
        self._secret = secret

    def settle_status(self, exc: openai.APIStatusError) -> Rejected | None:
        """Classify an HTTP error: None to retry, a rejection to bisect, or raise."""
        status = exc.status_code
        if status in _TRANSIENT_STATUSES or status >= 500:
            return None
        if status != 413 and html_error(exc):
            # A proxy's or gateway's page, not the service's verdict on our inputs or key.
            return None
        detail = self._message(exc)
        if status in _REJECTION_STATUSES:
            param = _error_param(exc)
            if param is not None and "input" not in param:
                # The request itself is wrong (e.g. `dimensions` for a model without them):
                # every row would be rejected, so this is configuration, not bad rows.
                raise ConfigError(
                    f"the embedding service at {self._endpoint} rejected parameter {param!r} "
                    f"for model {self.model!r}: {detail}; check embedding.model and "
                    "embedding.dimensions"
                )
            return Rejected(detail)
        raise EmbeddingUnavailable(self._refusal(status, detail), retriable=False)

    def _refusal(self, status: int, detail: str) -> str:
        where = f"the embedding service at {self._endpoint}"
        if status == 401:
            # The service's own text may quote part of the key; say nothing of it.
            return (
                f"{where} refused the API key (HTTP 401): check embedding.api_key or OPENAI_API_KEY"
            )
        if status == 403:
            return f"{where} denied access (HTTP 403): {detail}"
        if status == 404:
            return (
                f"{where} does not know model {self.model!r} or the endpoint (HTTP 404): {detail}; "
                "check embedding.model and embedding.base_url"
            )
        return f"{where} refused the request (HTTP {status}): {detail}"

    def _message(self, exc: openai.APIStatusError) -> str:
        body = exc.body
        text = body.get("message") if isinstance(body, Mapping) else None
        if not isinstance(text, str) or not text:
            text = f"HTTP {exc.status_code}"
        return self.scrub(text)[:_MESSAGE_LIMIT]

    def scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text


def html_error(exc: openai.APIStatusError) -> bool:
    return is_html(exc.response.headers.get("content-type"), exc.response.content)


def status_failure(exc: openai.APIStatusError) -> str:
    """An HTTP failure for the logs: the status, and the page when a proxy answered."""
    if html_error(exc):
        page = describe_body(exc.response.headers.get("content-type"), exc.response.content)
        return f"HTTP {exc.status_code} with {page}"
    return f"HTTP {exc.status_code}"


def _error_param(exc: openai.APIStatusError) -> str | None:
    param = exc.body.get("param") if isinstance(exc.body, Mapping) else None
    return param if isinstance(param, str) and param else None


def cause(exc: BaseException) -> str:
    """The innermost reason for a connection failure, e.g. ConnectError, without any URL."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return type(exc).__name__
