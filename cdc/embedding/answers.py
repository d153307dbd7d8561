"""Reading an embeddings endpoint's answer: pure functions, bytes in, vectors or a reason out.

A 200 is not yet an answer. Proxies and gateways put HTML error pages in front of services,
connections are cut mid-body, OpenAI-compatible servers differ in shape, and a model can emit
NaN. So the body is decoded here, not trusted to the client library, and every way it can be
wrong is told apart:

- `MalformedAnswer`: the answer as a whole cannot be used (not JSON, an HTML page, the wrong
  shape, fewer or more embeddings than inputs, an embedding that does not decode, or every
  embedding non-finite). The service is at fault; the request is worth repeating.
- `DimensionMismatch`: well-formed vectors of another size than configured: a configuration
  error, never retried, never stored.
- `Answer.faults`: some embeddings hold NaN or infinity while the others in the same answer are
  fine, so those inputs, not the service, are what the model cannot embed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]

# How much of an unreadable body a message quotes: enough to recognise a proxy's page.
_SNIPPET = 80
NON_FINITE = "the service answered an embedding holding NaN or infinite values for this input"


class MalformedAnswer(ValueError):
    """The answer cannot be read as one embedding per input; `args[0]` says why."""


class DimensionMismatch(ValueError):
    """Readable vectors of `size` elements where `dimensions` were configured."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size}-dimensional vectors")
        self.size = size


@dataclass(frozen=True)
class Answer:
    """One readable answer: a vector per input (None where `faults` names the input)."""

    vectors: list[Vector | None]
    faults: dict[int, str]
    tokens: int


def is_html(content_type: str | None, body: bytes) -> bool:
    """Whether a body is a web page (a proxy's or gateway's error page), not an API answer."""
    if content_type and "html" in content_type.lower():
        return True
    head = body[:256].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def describe_body(content_type: str | None, body: bytes) -> str:
    """A short, single-line account of a body that is not the JSON expected."""
    kind = "an HTML page" if is_html(content_type, body) else "a body that is not JSON"
    text = body.decode("utf-8", errors="replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    snippet = " ".join((title.group(1) if title else text).split())
    if len(snippet) > _SNIPPET:
        snippet = snippet[:_SNIPPET] + "..."
    where = f"{content_type or 'no Content-Type'}, {len(body)} bytes"
    return f"{kind} ({where}): {snippet!r}" if snippet else f"{kind} ({where}, empty)"


def parse_answer(body: bytes, content_type: str | None, expected: int, dimensions: int) -> Answer:
    """The embeddings of an answer to a request of `expected` inputs, each checked."""
    try:
        document = json.loads(body)
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError for binary junk
        reason = describe_body(content_type, body)
        if isinstance(error, json.JSONDecodeError) and not is_html(content_type, body):
            reason += f", {error.msg} (character {error.pos})"
        raise MalformedAnswer(reason) from None
    if not isinstance(document, Mapping) or not isinstance(document.get("data"), list):
        raise MalformedAnswer(f"JSON without a `data` list of embeddings ({_shape(document)})")
    slots: list[Vector | None] = [None] * expected
    seen: set[int] = set()
    faults: dict[int, str] = {}
    for item in document["data"]:
        index = item.get("index") if isinstance(item, Mapping) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected:
            raise MalformedAnswer(f"an embedding with index {index!r} for {expected} inputs")
        if index in seen:
            raise MalformedAnswer(f"two embeddings with index {index}")
        seen.add(index)
        vector = read_vector(item.get("embedding"), dimensions)
        if np.isfinite(vector).all():
            slots[index] = vector
        else:
            faults[index] = NON_FINITE
    if len(seen) != expected:
        raise MalformedAnswer(f"{expected - len(seen)} of {expected} embeddings missing")
    if faults and len(faults) == expected:
        # Nothing came out right: the model or the server is broken, not the inputs.
        raise MalformedAnswer(
            f"{'every' if expected > 1 else 'the'} embedding holds NaN or infinite values"
        )
    return Answer(vectors=slots, faults=faults, tokens=_prompt_tokens(document))


def read_vector(raw: object, dimensions: int) -> Vector:
    """One embedding: base64 little-endian float32 (decoded in bulk, no copy) or a JSON list of
    numbers, one-dimensional and `dimensions` long."""
    if isinstance(raw, str):
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedAnswer("an embedding that is not valid base64") from None
        if len(data) % 4:
            raise MalformedAnswer(f"a base64 embedding of {len(data)} bytes, not whole floats")
        vector: Vector = np.frombuffer(data, dtype="<f4")
    elif isinstance(raw, list) and all(_is_number(x) for x in raw):
        with np.errstate(over="ignore"):  # 1e39 becomes inf, caught as non-finite
            vector = np.asarray(raw, dtype=np.float32)
    else:
        raise MalformedAnswer(f"an embedding that is neither base64 nor numbers ({_shape(raw)})")
    if vector.shape[0] == 0:
        raise MalformedAnswer("an empty embedding")
    if vector.shape[0] != dimensions:
        raise DimensionMismatch(vector.shape[0])
    return vector


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shape(value: object) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(sorted(str(k) for k in value)[:6])
        return f"an object with keys {keys}" if keys else "an empty object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "null" if value is None else type(value).__name__


def _prompt_tokens(document: Mapping[str, object]) -> int:
    usage = document.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0
