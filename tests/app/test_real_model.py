"""End to end with the real exported TransXNet-T (built once per session by tests/conftest.py) in a
real uvicorn process: answers equal a direct ONNX Runtime run on the same preprocessed image."""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from app.imaging import ImagePreprocessor
from runtime.metadata import INPUT_NAME
from runtime.session import read_metadata
from tests.support.images import encoded_image
from tests.support.numerics import softmax
from tests.support.processes import free_port, running_process, service_env, status_of, wait_for

PNG = {"content-type": "image/png"}


@pytest.mark.slow
def test_real_model_served_by_uvicorn_matches_direct_onnx_runtime(exported_t_path) -> None:
    session = ort.InferenceSession(str(exported_t_path), providers=["CPUExecutionProvider"])
    metadata = read_metadata(session)
    preprocess = ImagePreprocessor(metadata, max_image_bytes=20 * 2**20, max_image_pixels=40_000_000)
    blobs = [encoded_image(300 + i, size=(320, 240)) for i in range(4)]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(exported_t_path, TRANSXNET_PORT=str(port), TRANSXNET_MAX_BATCH_SIZE="4")
    env["TRANSXNET_INTRA_OP_THREADS"] = "0"
    with running_process([sys.executable, "-m", "app"], env) as process:
        wait_for(lambda: status_of(f"{base}/readyz") == 200 or process.poll() is not None, timeout_s=300)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["model"] == metadata.variant
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(lambda b: httpx.post(f"{base}/classify", content=b, headers=PNG, timeout=120), blobs)
            )
        features = httpx.post(
            f"{base}/features",
            params={"outputs": "pooled,stage4", "format": "npz"},
            files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)],
            timeout=120,
        )

    for response, blob in zip(responses, blobs, strict=True):
        assert response.status_code == 200
        probabilities = softmax(session.run(["logits"], {INPUT_NAME: preprocess(blob)[None]})[0][0])
        predictions = response.json()["results"][0]["predictions"]
        expected = np.argsort(-probabilities)[:5]
        assert [p["index"] for p in predictions] == expected.tolist()
        assert [p["label"] for p in predictions] == [metadata.labels[i] for i in expected]
        np.testing.assert_allclose(
            [p["probability"] for p in predictions], probabilities[expected], atol=1e-4
        )

    assert features.status_code == 200
    arrays = np.load(io.BytesIO(features.content))
    batch = np.stack([preprocess(b) for b in blobs])
    pooled, stage4 = session.run(["pooled", "stage4"], {INPUT_NAME: batch})
    assert arrays["pooled"].shape == (4, metadata.embed_dim)
    np.testing.assert_allclose(arrays["pooled"], pooled, atol=1e-4)
    np.testing.assert_allclose(arrays["stage4"], stage4, atol=1e-4)
