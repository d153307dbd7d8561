"""An OpenAI-compatible embeddings endpoint that costs next to nothing per input.

`bench/throughput.py` measures wal2vec against PostgreSQL's own limits, so the endpoint must not
be the limit: each vector is a mix of a few precomputed unit vectors picked by the text's hash
(`cheap_vector`), answered in base64. Tokens are
estimated (characters / 4), not counted. `cheap_vector` is also what the bench's COPY baseline
stores, so both write the same vectors.

A client that asks for `"encoding_format": "float"` (pgai's worker does) gets JSON numbers:
formatting 1536 floats costs ~0.8 ms, which would make the endpoint the limit, so those answers
are the text's first pooled vector alone, whose JSON text is formatted once (`float_text`). Its
direction differs from `cheap_vector`'s; where no index is built (the only place a float
client is measured) the stored bytes cost the same.

    python -m bench.fast_endpoint --dimensions 1536 --port 0   # prints its base URL

`measure_ceiling` asks it directly, as wal2vec's client does, and says what it can serve.

`GET /v1/stats` says for how long, in all, at least one request was being served
(`busy_seconds`, a union of intervals, so concurrent requests are not counted twice) and how
many were: the bench's stage breakdown takes the embedding's wall time from there
(`bench.e2e.stages`), as the streamer's own request timer sums over concurrent requests.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np

POOL = 1024  # precomputed unit vectors
MIXED = 3  # pooled vectors mixed per text, from its hash: about POOL**MIXED distinct directions
WEIGHTS = (1.0, 0.6, 0.35)


@lru_cache(maxsize=4)
def _pool(dimensions: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(1536)
    pool = rng.standard_normal((POOL, dimensions)).astype(np.float32)
    normalized: np.ndarray[Any, np.dtype[np.float32]] = pool / np.linalg.norm(
        pool, axis=1, keepdims=True
    )
    return normalized


def cheap_vector(text: str, dimensions: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A unit vector for `text`: a weighted mix of `MIXED` pooled vectors its hash picks (a few
    microseconds), spread over the sphere like real embeddings rather than in tight clusters,
    so the HNSW index does the work it would do for real vectors."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4 * MIXED).digest()
    pool = _pool(dimensions)
    picks = [int.from_bytes(digest[i : i + 4], "little") % POOL for i in range(0, 4 * MIXED, 4)]
    vector = pool[picks[0]] * WEIGHTS[0]
    for pick, weight in zip(picks[1:], WEIGHTS[1:], strict=True):
        vector += pool[pick] * weight
    vector /= np.linalg.norm(vector)
    return vector.astype("<f4", copy=False)


@lru_cache(maxsize=POOL * 2)
def float_text(pick: int, dimensions: int) -> str:
    """Pooled vector `pick` as a JSON array of numbers, formatted once."""
    return json.dumps(_pool(dimensions)[pick].tolist())


def float_vector_text(text: str, dimensions: int) -> str:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest()
    return float_text(int.from_bytes(digest, "little") % POOL, dimensions)


def answer(body: bytes, dimensions: int) -> bytes:
    """The JSON answer to one `/embeddings` request body."""
    request = json.loads(body)
    texts = request["input"]
    texts = [str(text) for text in ([texts] if isinstance(texts, str) else texts)]
    wanted = request.get("dimensions") or dimensions
    tokens = sum(len(text) // 4 + 1 for text in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    model = request.get("model", "fake")
    if request.get("encoding_format") == "float":
        return float_answer(texts, wanted, model, usage)
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(cheap_vector(text, wanted).tobytes()).decode(),
        }
        for index, text in enumerate(texts)
    ]
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def float_answer(texts: list[str], dimensions: int, model: str, usage: dict[str, int]) -> bytes:
    """The answer with JSON numbers, spliced from preformatted arrays (json.dumps of the whole
    answer would format every float again)."""
    items = (
        f'{{"object": "embedding", "index": {index}, '
        f'"embedding": {float_vector_text(text, dimensions)}}}'
        for index, text in enumerate(texts)
    )
    head = f'{{"object": "list", "model": {json.dumps(model)}, "usage": {json.dumps(usage)}, '
    return (head + '"data": [' + ", ".join(items) + "]}").encode()


class BusyClock:
    """Wall time during which at least one request was in the server: from reading a request
    to having written its answer. Thread-safe (one thread per connection)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._since = 0.0  # when in_flight last went from 0 to 1
        self._busy = 0.0  # closed busy intervals
        self._requests = 0

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        with self._lock:
            if self._in_flight == 0:
                self._since = time.monotonic()
            self._in_flight += 1
            self._requests += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._busy += time.monotonic() - self._since

    def stats(self) -> dict[str, float]:
        with self._lock:
            busy = self._busy + (time.monotonic() - self._since if self._in_flight else 0.0)
            return {"busy_seconds": busy, "requests": float(self._requests)}


def make_handler(dimensions: int, clock: BusyClock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects
        disable_nagle_algorithm = True  # headers and body go out at once, no delayed ACK

        def do_POST(self) -> None:
            with clock.serving():
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not self.path.rstrip("/").endswith("/embeddings"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                self._send(200, answer(body, dimensions))

        def do_GET(self) -> None:
            if not self.path.rstrip("/").endswith("/stats"):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            self._send(200, json.dumps(clock.stats()).encode())

        def _send(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no line per request

    return Handler


def measure_ceiling(  # noqa: PLR0917
    base_url: str,
    texts: list[str],
    batch: int,
    clients: int = 2,
    seconds: float = 3.0,
    encoding: str = "base64",
) -> dict[str, Any]:
    """Requests of `batch` texts from `clients` threads for `seconds`: what it can serve
    (the answers are read whole, not parsed)."""
    url = urlsplit(base_url)
    request = {"input": texts[:batch], "model": "m", "encoding_format": encoding}
    payload = json.dumps(request).encode()
    counts = [0] * clients
    deadline = time.monotonic() + seconds

    def client(slot: int) -> None:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
        path = url.path.rstrip("/") + "/embeddings"
        while time.monotonic() < deadline:
            conn.request("POST", path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            counts[slot] += 1
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    inputs = len(texts[:batch])
    return {
        "batch_inputs": inputs,
        "encoding_format": encoding,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(sum(counts) / elapsed, 1),
        "inputs_per_s": round(sum(counts) * inputs / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dimensions", type=int, default=1536)
    args = parser.parse_args(argv)
    handler = make_handler(args.dimensions, BusyClock())
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
