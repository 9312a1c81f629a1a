"""Strict Open Inference Protocol parsing: what used to be a 500 with a traceback, or invalid JSON
out, is a 400 naming the problem; numbers in headers are exact; compressed and framed bodies are
checked to their end; `classification` is clamped; JSON responses are bounded."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest

from app.v2 import protocol
from tests.support.fake_model import IMAGE_SIZE, NUM_CLASSES, fake_metadata
from tests.support.images import encoded_image

pytestmark = pytest.mark.anyio

MODEL = fake_metadata().variant
INFER = f"/v2/models/{MODEL}/infer"
HEADER = "Inference-Header-Content-Length"


def image_bytes_request(*, id_: object = "r1", name: str = "image_bytes", data: object = None) -> dict:
    return {
        "id": id_,
        "inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": data or ["x"]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    }


def with_image(document: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    """`document` followed by `blob` as the binary `image_bytes` input it describes."""
    header = json.dumps(document).encode()
    return header + len(blob).to_bytes(4, "little") + blob, {HEADER: str(len(header))}


def image_document(outputs: list[dict], **parameters: object) -> dict:
    blob_size = 4 + len(encoded_image(3))
    document = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": blob_size},
            }
        ],
        "outputs": outputs,
    }
    if parameters:
        document["parameters"] = parameters
    return document


def assert_protocol_error(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert list(body) == ["error"] and fragment in body["error"], body


async def test_json_nested_thousands_deep_is_400_not_a_recursion_error(client, caplog) -> None:
    caplog.set_level(logging.ERROR)
    body = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_protocol_error(await client.post(INFER, content=body), "nested too deeply")
    assert not [r for r in caplog.records if r.exc_info]


async def test_an_integer_of_thousands_of_digits_is_400(client) -> None:
    body = b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [' + b"9" * 5000 + b"]}]}"
    assert_protocol_error(await client.post(INFER, content=body), "not valid JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_not_json(client, constant: str) -> None:
    body = b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [' + constant.encode()
    response = await client.post(INFER, content=body + b"]}]}")
    assert_protocol_error(response, f"{constant} is not valid JSON")


async def test_binary_tensors_holding_nan_are_refused_before_inference(client) -> None:
    pixels = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    pixels[0, 1, 2, 3] = np.nan
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "FP32",
                    "shape": list(pixels.shape),
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ]
        }
    ).encode()
    response = await client.post(INFER, content=header + pixels.tobytes(), headers={HEADER: str(len(header))})
    assert_protocol_error(response, "NaN or infinity")


@pytest.mark.parametrize(
    ("field", "document"),
    [
        ("BYTES data", image_bytes_request(data=["\ud800"])),
        ("an input name", image_bytes_request(name="image_bytes\udc00")),
        ("the request id", image_bytes_request(id_="abc\ud83d")),
    ],
)
async def test_a_lone_surrogate_is_400_not_a_500(client, caplog, field: str, document: dict) -> None:
    caplog.set_level(logging.ERROR)
    body = json.dumps(document, ensure_ascii=True).encode()  # \\udXXX escapes, as an attacker sends
    response = await client.post(INFER, content=body)
    assert_protocol_error(response, "surrogate")
    assert not [r for r in caplog.records if r.exc_info], field


async def test_an_overlong_request_id_is_refused_before_inference(client) -> None:
    body = json.dumps(image_bytes_request(id_="x" * 1000)).encode()
    assert_protocol_error(await client.post(INFER, content=body), "at most 256")


@pytest.mark.parametrize("value", [" 12 ", "+12", "1_2", "12.0", "-1", "0x0c", "1" * 30])
async def test_the_header_length_must_be_exact_digits(client, value: str) -> None:
    response = await client.post(INFER, content=b'{"inputs": []}', headers={HEADER: value})
    assert_protocol_error(response, HEADER)


async def test_a_transfer_coding_other_than_chunked_is_refused(client) -> None:
    async def body():
        yield b'{"inputs": []}'

    # httpx sends chunked for a generator; the extra coding is what a hostile proxy would add.
    response = await client.post(INFER, content=body(), headers={"Transfer-Encoding": "gzip, chunked"})
    assert response.status_code == 501 and "Transfer-Encoding" in response.json()["error"]


async def test_classification_is_clamped_to_the_class_count(client) -> None:
    document = image_document([{"name": "stage1", "parameters": {"classification": 10**9}}])
    body, headers = with_image(document, encoded_image(3))
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["shape"] == [1, NUM_CLASSES]  # not the 25,088 values of stage1


async def test_a_json_response_past_its_cap_points_at_binary_outputs(client, monkeypatch) -> None:
    monkeypatch.setattr(protocol, "MAX_JSON_VALUES", 1000)
    at_cap = with_image(image_document([{"name": "logits"}]), encoded_image(3))  # 1000 values
    assert (await client.post(INFER, content=at_cap[0], headers=at_cap[1])).status_code == 200
    both = image_document([{"name": "logits"}, {"name": "pooled"}])
    past = with_image(both, encoded_image(3))
    assert_protocol_error(await client.post(INFER, content=past[0], headers=past[1]), "binary data")
    # The same outputs as binary data are fine.
    binary = with_image(image_document(both["outputs"], binary_data_output=True), encoded_image(3))
    assert (await client.post(INFER, content=binary[0], headers=binary[1])).status_code == 200


async def test_a_json_request_with_more_values_than_a_full_request_is_413_before_parsing(client) -> None:
    limits = client.app.state.service.pipeline.limits
    allowed = limits.max_images_per_request * limits.image_elements
    # One value too many for every image of a full request, as one-digit JSON numbers.
    body = (
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": ['
        + b"0," * (allowed + 5000)
        + b"0]}]}"
    )
    response = await client.post(INFER, content=body)
    assert response.status_code == 400 and "binary data" in response.json()["error"]
