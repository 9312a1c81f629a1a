"""Large v2 JSON bodies parse in a worker process, to the same request as inline parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.errors import ProtocolError
from app.v2.json_worker import JsonParser
from app.v2.protocol import decode_numeric, parse_infer_request

pytestmark = pytest.mark.anyio


def tensor_body(values: np.ndarray, **extra: object) -> bytes:
    document = {
        "id": "big",
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": list(values.shape), "data": values.tolist()}
        ],
        **extra,
    }
    return json.dumps(document).encode()


@pytest.fixture
def parser():
    parser = JsonParser(large_body_bytes=64 * 1024)
    try:
        yield parser
    finally:
        parser.close()


async def test_a_large_body_parses_in_the_worker_to_the_inline_result(parser: JsonParser) -> None:
    values = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    body = tensor_body(values, outputs=[{"name": "logits", "parameters": {"classification": 3}}])
    assert len(body) > parser.large_body_bytes
    parsed = await parser.parse(body, None)
    assert parser._pool is not None  # it really went to the worker
    inline = parse_infer_request(body, None)
    assert (parsed.id, parsed.outputs, parsed.parameters) == (inline.id, inline.outputs, inline.parameters)
    (item,) = parsed.inputs
    assert isinstance(item.data, np.ndarray)  # decoded there: a buffer, not a list of floats
    np.testing.assert_array_equal(decode_numeric(item), decode_numeric(inline.inputs[0]))
    np.testing.assert_array_equal(decode_numeric(item), values)


async def test_a_small_body_parses_inline(parser: JsonParser) -> None:
    body = tensor_body(np.zeros((1, 3, 2, 2), dtype=np.float32))
    parsed = await parser.parse(body, None)
    assert parser._pool is None
    assert isinstance(parsed.inputs[0].data, list)


async def test_the_worker_s_protocol_errors_reach_the_caller_as_they_are(parser: JsonParser) -> None:
    values = np.zeros((2, 3, 64, 64), dtype=np.float32)
    body = tensor_body(values).replace(b"0.0", b"NaN", 1)
    assert len(body) > parser.large_body_bytes
    with pytest.raises(ProtocolError, match="NaN is not valid JSON"):
        await parser.parse(body, None)
    wrong = tensor_body(values).replace(b'"shape": [2', b'"shape": [3', 1)
    with pytest.raises(ProtocolError, match="needs"):  # decoded in the worker, checked there
        await parser.parse(wrong, None)
    # The worker is still there for the next request.
    assert (await parser.parse(tensor_body(values), None)).id == "big"
