"""Reading an embeddings endpoint's answer: every way a body can be wrong, told apart."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from cdc.embedding.answers import (
    NON_FINITE,
    DimensionMismatch,
    MalformedAnswer,
    describe_body,
    is_html,
    parse_answer,
    read_vector,
)

DIMS = 4
JSON = "application/json"


def b64(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def body(data: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"object": "list", "data": data, **extra}).encode()


def item(index: int, values: list[float] | None = None, *, as_b64: bool = True) -> dict[str, Any]:
    values = values if values is not None else [index + 0.5] * DIMS
    return {"object": "embedding", "index": index, "embedding": b64(values) if as_b64 else values}


def test_a_good_answer_in_input_order_with_its_tokens() -> None:
    raw = body([item(1), item(0, as_b64=False)], usage={"prompt_tokens": 7})
    answer = parse_answer(raw, JSON, 2, DIMS)
    assert answer.faults == {} and answer.tokens == 7
    assert [v.tolist() for v in answer.vectors if v is not None] == [[0.5] * 4, [1.5] * 4]


@pytest.mark.parametrize(
    ("raw", "content_type", "reason"),
    [
        (body([item(0)])[:25], JSON, "not JSON (application/json, 25 bytes)"),
        (b"", JSON, "not JSON (application/json, 0 bytes, empty)"),
        (b"\xff\xfe\x00garbage", None, "not JSON (no Content-Type"),
        (b"<html><head><title>502 Bad Gateway</title></head></html>", "text/html", "'502 Bad"),
        (b"<!DOCTYPE html><p>Just a moment...</p>", None, "an HTML page"),
        (b"upstream connect error", "text/plain", "'upstream connect error'"),
        (b"[1, 2]", JSON, "without a `data` list of embeddings (a list of 2)"),
        (b"null", JSON, "without a `data` list of embeddings (null)"),
        (b'{"embeddings": []}', JSON, "(an object with keys embeddings)"),
        (b'{"data": {"0": "x"}}', JSON, "without a `data` list"),
        (body(["x"]), JSON, "index None"),  # type: ignore[list-item]
        (body([{"embedding": b64([1] * DIMS)}]), JSON, "index None"),
        (body([item(0), item(0)]), JSON, "two embeddings with index 0"),
        (body([item(0)]), JSON, "1 of 2 embeddings missing"),
        (body([item(0), item(1), item(2)]), JSON, "index 2 for 2 inputs"),
        (body([{**item(0), "index": True}, item(1)]), JSON, "index True"),
        (body([{**item(0), "embedding": "%%%"}, item(1)]), JSON, "not valid base64"),
        (body([{**item(0), "embedding": "AAAAAAA="}, item(1)]), JSON, "not whole floats"),
        (body([{**item(0), "embedding": [1, "2", 3, 4]}, item(1)]), JSON, "neither base64"),
        (body([{**item(0), "embedding": [[1, 2], [3, 4]]}, item(1)]), JSON, "neither base64"),
        (body([{**item(0), "embedding": None}, item(1)]), JSON, "neither base64 nor numbers"),
        (body([{**item(0), "embedding": []}, item(1)]), JSON, "an empty embedding"),
    ],
)
def test_unusable_answers_say_what_is_wrong(
    raw: bytes, content_type: str | None, reason: str
) -> None:
    with pytest.raises(MalformedAnswer) as caught:
        parse_answer(raw, content_type, 2, DIMS)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_truncated_json_names_where_it_stops() -> None:
    with pytest.raises(MalformedAnswer, match=r"\(character \d+\)"):
        parse_answer(body([item(0)])[:40], JSON, 1, DIMS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_vector_among_good_ones_is_that_inputs_fault(bad: float) -> None:
    answer = parse_answer(body([item(0), item(1, [1, bad, 2, 3]), item(2)]), JSON, 3, DIMS)
    assert answer.faults == {1: NON_FINITE}
    assert answer.vectors[1] is None
    assert answer.vectors[0] is not None and answer.vectors[2] is not None


def test_float_lists_with_nan_literals_or_overflow_are_non_finite_too() -> None:
    raw = b'{"data": [{"index": 0, "embedding": [NaN, 1, 2, 3]}, ' + (
        b'{"index": 1, "embedding": [1e39, 1, 2, 3]}, {"index": 2, "embedding": [1, 1, 2, 3]}]}'
    )
    assert parse_answer(raw, JSON, 3, DIMS).faults.keys() == {0, 1}


@pytest.mark.parametrize("count", [1, 3])
def test_nan_for_every_input_is_the_service_at_fault(count: int) -> None:
    nan = [float("nan")] * DIMS
    with pytest.raises(MalformedAnswer, match="NaN or infinite"):
        parse_answer(body([item(i, nan) for i in range(count)]), JSON, count, DIMS)


def test_vectors_of_another_size_are_a_dimension_mismatch() -> None:
    with pytest.raises(DimensionMismatch) as caught:
        parse_answer(body([item(0, [1.0] * 8)]), JSON, 1, DIMS)
    assert caught.value.size == 8


def test_read_vector_decodes_base64_without_copying() -> None:
    vector = read_vector(b64([1, 2, 3, 4]), DIMS)
    assert vector.dtype == np.dtype("<f4") and not vector.flags.writeable
    assert vector.tolist() == [1, 2, 3, 4]


def test_html_is_recognised_by_type_or_by_its_first_bytes() -> None:
    assert is_html("text/html; charset=utf-8", b"")
    assert is_html(None, b"  \n<HTML><body>")
    assert not is_html(JSON, b'{"data": []}')
    assert not is_html("text/plain", b"no")


def test_descriptions_are_short_and_quote_the_page_title() -> None:
    page = b"<html><head><title>504 Gateway Time-out</title></head>" + b"x" * 5000 + b"</html>"
    text = describe_body("text/html", page)
    assert text.startswith("an HTML page (text/html, ") and "'504 Gateway Time-out'" in text
    assert len(describe_body("text/plain", b"y" * 5000)) < 200
