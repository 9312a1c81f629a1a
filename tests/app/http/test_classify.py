"""POST /classify through the real app (fake model): correct, in order, batched under concurrency."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest

from app.imaging import ImagePreprocessor
from tests.app.conftest import TEST_LIMITS, assert_matches_reference, make_settings, running_app
from tests.support.fake_model import fake_metadata
from tests.support.images import encoded_image

pytestmark = pytest.mark.anyio


async def test_raw_body_image_is_classified_like_a_direct_onnx_runtime_run(client, reference) -> None:
    data = encoded_image(1)
    response = await client.post("/classify", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "transxnet_fake"
    assert body["weights"] == "random-init seed 0"
    assert len(body["results"]) == 1
    assert_matches_reference(body["results"][0], reference.probabilities(data))


async def test_multipart_images_are_answered_in_request_order(client, reference) -> None:
    blobs = [encoded_image(seed) for seed in (10, 11, 12)]
    files = [("file", ("a.png", blobs[0], "image/png"))]
    files += [("files", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs[1:])]
    response = await client.post("/classify", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 3
    for result, blob in zip(results, blobs, strict=True):
        assert_matches_reference(result, reference.probabilities(blob))


def batch_histogram(metrics_text: str) -> tuple[float, float]:
    """(batches of size 1, all batches) from the batch-size histogram."""
    ones = re.search(r'^transxnet_batch_size_bucket\{le="1.0"\} (\S+)$', metrics_text, re.M)
    count = re.search(r"^transxnet_batch_size_count (\S+)$", metrics_text, re.M)
    assert ones and count
    return float(ones.group(1)), float(count.group(1))


async def test_concurrent_requests_are_batched_and_each_response_belongs_to_its_image(
    client, reference
) -> None:
    blobs = [encoded_image(100 + i) for i in range(16)]
    before = batch_histogram((await client.get("/metrics")).text)
    responses = await asyncio.gather(
        *(client.post("/classify", content=b, headers={"content-type": "image/png"}) for b in blobs)
    )
    after = batch_histogram((await client.get("/metrics")).text)
    for response, blob in zip(responses, blobs, strict=True):
        assert response.status_code == 200
        assert_matches_reference(response.json()["results"][0], reference.probabilities(blob))
    # distinct images really gave distinct answers, so a mix-up could not go unnoticed
    assert len({r.json()["results"][0]["predictions"][0]["index"] for r in responses}) > 4
    singles, batches = after[0] - before[0], after[1] - before[1]
    assert batches - singles > 0, "no batch larger than one image under 16 concurrent requests"


async def test_request_with_more_images_than_max_batch_size_is_split_and_reassembled(
    client, reference
) -> None:
    blobs = [encoded_image(200 + i) for i in range(12)]  # max_batch_size is 8
    files = [("files", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]
    before = batch_histogram((await client.get("/metrics")).text)
    response = await client.post("/classify", files=files)
    after = batch_histogram((await client.get("/metrics")).text)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 12
    for result, blob in zip(results, blobs, strict=True):
        assert_matches_reference(result, reference.probabilities(blob))
    assert after[1] - before[1] >= 2


@pytest.mark.parametrize("top_k", [1, 7, 1000])
async def test_top_k_sets_how_many_classes_come_back(client, reference, top_k: int) -> None:
    data = encoded_image(3)
    response = await client.post(
        "/classify", params={"top_k": top_k}, content=data, headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert_matches_reference(result, reference.probabilities(data), k=top_k)
    if top_k == 1000:
        assert sum(p["probability"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("top_k", ["0", "1001", "-3", "five"])
async def test_top_k_out_of_range_is_422_in_the_error_shape(client: httpx.AsyncClient, top_k: str) -> None:
    response = await client.post(
        "/classify", params={"top_k": top_k}, content=encoded_image(3), headers={"content-type": "image/png"}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert "top_k" in error["message"]


async def test_reduced_scale_jpeg_decoding_is_what_the_service_feeds_the_model(
    fake_model_path, reference
) -> None:
    # 1000 x 1000 decodes at 1/4 (250 x 250) with gap 1: the input the model sees really changes.
    data = encoded_image(7, size=(1000, 1000), fmt="JPEG")
    reduced = ImagePreprocessor(
        fake_metadata(),
        max_image_bytes=TEST_LIMITS["max_image_bytes"],
        max_image_pixels=TEST_LIMITS["max_image_pixels"],
        jpeg_reducing_gap=1.0,
    )
    expected = reference.probabilities_of(reduced(data))
    exact = reference.probabilities(data)
    assert not np.allclose(expected, exact, rtol=1e-3, atol=0), "the test image does not tell the paths apart"
    headers = {"content-type": "image/jpeg"}
    async with running_app(make_settings(fake_model_path, jpeg_reducing_gap=1.0)) as client:
        response = await client.post("/classify", content=data, headers=headers)
    assert response.status_code == 200
    assert_matches_reference(response.json()["results"][0], expected)
    async with running_app(make_settings(fake_model_path)) as client:
        response = await client.post("/classify", content=data, headers=headers)
    assert_matches_reference(response.json()["results"][0], exact)
