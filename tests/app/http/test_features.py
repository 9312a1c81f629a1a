"""POST /features: selected outputs as JSON or .npz, equal to a direct ONNX Runtime run."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.app.conftest import make_settings, running_app
from tests.support.fake_model import STAGE_CHANNELS
from tests.support.images import encoded_image

pytestmark = pytest.mark.anyio

PNG = {"content-type": "image/png"}


def tensor(entry: dict) -> np.ndarray:
    assert entry["dtype"] == "float32"
    return np.asarray(entry["data"], dtype=np.float32).reshape(entry["shape"])


async def test_default_output_is_pooled_and_matches_direct_run(client, reference) -> None:
    data = encoded_image(5)
    response = await client.post("/features", content=data, headers=PNG)
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert set(result) == {"pooled"}
    assert result["pooled"]["shape"] == [STAGE_CHANNELS[-1]]
    np.testing.assert_allclose(
        tensor(result["pooled"]), reference.outputs(data, ["pooled"])["pooled"], atol=1e-5
    )


@pytest.mark.parametrize(
    "params",
    [
        [("outputs", "stage1,stage4"), ("outputs", "pooled")],
        [("outputs", "stage1"), ("outputs", "stage4"), ("outputs", "pooled")],
    ],
)
async def test_outputs_are_selected_repeated_or_comma_separated(client, reference, params) -> None:
    data = encoded_image(6)
    response = await client.post("/features", params=params, content=data, headers=PNG)
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert set(result) == {"stage1", "stage4", "pooled"}
    expected = reference.outputs(data, ["stage1", "stage4", "pooled"])
    assert result["stage1"]["shape"] == [STAGE_CHANNELS[0], 56, 56]
    assert result["stage4"]["shape"] == [STAGE_CHANNELS[-1], 7, 7]
    for name, array in expected.items():
        np.testing.assert_allclose(tensor(result[name]), array, atol=1e-5)


@pytest.mark.parametrize("how", ["accept", "format"])
async def test_npz_stacks_each_output_over_the_request_images(client, reference, how: str) -> None:
    blobs = [encoded_image(seed) for seed in (7, 8, 9)]
    files = [("files", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]
    params = [("outputs", "pooled,stage2")] + ([("format", "npz")] if how == "format" else [])
    headers = {"accept": "application/x-npz"} if how == "accept" else {}
    response = await client.post("/features", params=params, files=files, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-npz"
    arrays = np.load(io.BytesIO(response.content))
    assert sorted(arrays.files) == ["pooled", "stage2"]
    assert arrays["stage2"].shape == (3, STAGE_CHANNELS[1], 28, 28)
    for i, blob in enumerate(blobs):
        expected = reference.outputs(blob, ["pooled", "stage2"])
        np.testing.assert_allclose(arrays["pooled"][i], expected["pooled"], atol=1e-5)
        np.testing.assert_allclose(arrays["stage2"][i], expected["stage2"], atol=1e-5)


@pytest.mark.parametrize(
    "params", [[("outputs", "logits")], [("outputs", "stage5")], [("outputs", ",")], [("format", "xml")]]
)
async def test_unknown_output_or_format_is_422(client, params) -> None:
    response = await client.post("/features", params=params, content=encoded_image(1), headers=PNG)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_parameter"


async def test_npz_headers_escape_provenance_that_http_cannot_carry(fake_model_path) -> None:
    # A checkpoint file named in UTF-8 (or with a newline) must not turn every npz response into 500.
    async with running_app(make_settings(fake_model_path)) as client:
        service = client.app.state.service
        service.metadata = service.metadata.model_copy(update={"weights": "poids\u2713\n.pth.tar sha256:ab"})
        png = {"content-type": "image/png"}
        params = {"format": "npz"}
        response = await client.post("/features", params=params, content=encoded_image(1), headers=png)
    assert response.status_code == 200, response.text
    assert response.headers["x-weights"] == "poids%E2%9C%93%0A.pth.tar sha256:ab"
    assert response.headers["x-model"] == "transxnet_fake"
