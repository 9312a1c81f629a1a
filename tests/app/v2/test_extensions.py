"""Triton's model configuration and statistics extensions over HTTP: the config says what the server
really does (limits, batching, inputs, outputs from the ONNX file), the statistics count what really
ran, and `/v2` lists exactly the extensions implemented."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.v2.protocol import EXTENSIONS
from tests.app.conftest import make_settings, running_app
from tests.support.fake_model import IMAGE_SIZE, NUM_CLASSES, STAGE_CHANNELS, fake_metadata
from tests.support.images import encoded_image

pytestmark = pytest.mark.anyio

MODEL = fake_metadata().variant
PNG = {"content-type": "image/png"}


async def test_v2_lists_exactly_the_extensions_implemented(client) -> None:
    server = (await client.get("/v2")).json()
    assert sorted(server["extensions"]) == sorted(EXTENSIONS)
    assert set(EXTENSIONS) == {"binary_tensor_data", "classification", "model_configuration", "statistics"}
    # Each listed extension answers.
    assert (await client.get(f"/v2/models/{MODEL}/config")).status_code == 200
    assert (await client.get(f"/v2/models/{MODEL}/stats")).status_code == 200


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
async def test_config_describes_the_served_model_with_tritons_field_names(client, suffix: str) -> None:
    config = (await client.get(f"/v2/models/{MODEL}{suffix}/config")).json()
    settings = client.app.state.service.settings
    assert (config["name"], config["platform"], config["backend"]) == (
        MODEL,
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config["max_batch_size"] == settings.max_batch_size == 8
    inputs = {item["name"]: item for item in config["input"]}
    assert inputs["images"]["data_type"] == "TYPE_FP32"
    assert inputs["images"]["dims"] == [3, IMAGE_SIZE, IMAGE_SIZE]  # no batch axis: max_batch_size > 0
    assert inputs["image_bytes"] == {
        "name": "image_bytes",
        "data_type": "TYPE_STRING",
        "dims": [1],
        "optional": True,
    }
    assert inputs["images"]["optional"] is True  # a request sends one of the two
    outputs = {item["name"]: item["dims"] for item in config["output"]}
    assert outputs["logits"] == [NUM_CLASSES]
    assert outputs["pooled"] == [STAGE_CHANNELS[-1]]
    assert outputs["stage1"] == [STAGE_CHANNELS[0], IMAGE_SIZE // 4, IMAGE_SIZE // 4]
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == round(settings.max_batch_delay_ms * 1000) == 20_000
    assert batching["preferred_batch_size"] == [settings.max_batch_size]
    assert config["instance_group"] == [{"name": MODEL, "kind": "KIND_CPU", "count": 1}]


async def test_config_and_stats_of_an_unknown_model_or_version_are_404(client) -> None:
    for path in ("/v2/models/nope/config", f"/v2/models/{MODEL}/versions/2/config", "/v2/models/nope/stats"):
        response = await client.get(path)
        assert response.status_code == 404 and "error" in response.json(), path


async def test_statistics_count_what_really_ran(fake_model_path) -> None:
    settings = make_settings(fake_model_path, max_batch_size=4, max_batch_delay_ms=0)
    async with running_app(settings) as client:
        batcher = client.app.state.service.batcher
        before = (await client.get(f"/v2/models/{MODEL}/stats")).json()["model_stats"][0]
        assert (before["inference_count"], before["execution_count"]) == (0, 0)  # warm-up is not counted

        files = [("files", (f"{i}.png", encoded_image(i), "image/png")) for i in range(3)]
        singles = [client.post("/classify", content=encoded_image(10 + i), headers=PNG) for i in range(4)]
        responses = await asyncio.gather(client.post("/classify", files=files), *singles)
        assert [r.status_code for r in responses] == [200] * 5
        tensor = {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "FP32",
                    "shape": [2, 3, IMAGE_SIZE, IMAGE_SIZE],
                    "data": np.zeros(2 * 3 * IMAGE_SIZE**2).tolist(),
                }
            ],
            "outputs": [{"name": "pooled"}],
        }
        assert (await client.post(f"/v2/models/{MODEL}/infer", json=tensor)).status_code == 200
        assert (await client.post("/classify", content=b"junk", headers=PNG)).status_code == 400

        stats = (await client.get("/v2/models/stats")).json()["model_stats"]
        assert len(stats) == 1
        entry = stats[0]
        assert (entry["name"], entry["version"]) == (MODEL, "1")
        assert entry["inference_count"] == 3 + 4 + 2  # images, as Triton counts
        assert entry["execution_count"] == batcher.batches_run
        inference = entry["inference_stats"]
        assert inference["success"]["count"] == 6
        assert inference["fail"]["count"] == 1  # the undecodable image
        for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert inference[phase]["count"] == 6, phase
        assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
        assert inference["compute_input"]["ns"] > 0  # decoding, for the five image requests
        sizes = {batch["batch_size"]: batch["compute_infer"]["count"] for batch in entry["batch_stats"]}
        assert sum(size * count for size, count in sizes.items()) == 9
        assert sum(sizes.values()) == batcher.batches_run
        assert max(sizes) <= 4
        assert entry["last_inference"] > 0
