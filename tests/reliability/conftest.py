"""Shared pieces of the reliability suite: distinct deterministic test photos and the offline reference
(ONNX Runtime directly on `ImagePreprocessor(metadata)(bytes)` at batch 1) every answer is held to.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from app.imaging import ImagePreprocessor
from runtime.metadata import INPUT_NAME
from runtime.session import read_metadata
from tests.support.fake_model import build_fake_model
from tests.support.numerics import softmax
from tests.support.processes import ROOT

PHOTOS = ROOT / "tests" / "fixtures" / "preprocess" / "photos"
JPEG = {"content-type": "image/jpeg"}
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="session")
def reliability_fake_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny stand-in model: for tests where the runner's behaviour, not the network, matters."""
    return build_fake_model(tmp_path_factory.mktemp("reliability-model") / "transxnet_fake.onnx")


# --------------------------------------------------------------------------- distinct test photos


def _photos() -> list[Image.Image]:
    photos = []
    for path in sorted(PHOTOS.iterdir()):
        with Image.open(path) as photo:
            photos.append(photo.convert("RGB"))
    return photos


def distinct_images(count: int, *, seed: int = 0, max_side: int = 160) -> list[bytes]:
    """`count` different small photographs, deterministic for `seed`: a random crop of a sample
    photo, scaled to at most `max_side`, with a colour shift and noise, alternately JPEG and PNG.
    Small sides keep decoding cheap so a soak measures the service, not Pillow."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    blobs: list[bytes] = []
    seen: set[bytes] = set()
    while len(blobs) < count:
        photo = photos[len(blobs) % len(photos)]
        width, height = photo.size
        crop_w = int(rng.integers(width // 4, width + 1))
        crop_h = int(rng.integers(height // 4, height + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        scale = max_side / max(crop_w, crop_h)
        size = (max(8, round(crop_w * scale)), max(8, round(crop_h * scale)))
        crop = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.Resampling.BILINEAR)
        pixels = np.asarray(crop, dtype=np.int16)
        pixels = pixels + rng.integers(-40, 41, 3) + rng.integers(-6, 7, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        if len(blobs) % 2:
            image.save(buffer, format="PNG")
        else:
            image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
        blob = buffer.getvalue()
        if blob not in seen:
            seen.add(blob)
            blobs.append(blob)
    return blobs


# --------------------------------------------------------------------------- the offline reference


class OfflineReference:
    """What the service must answer for one image: its own preprocessing, then ONNX Runtime on a
    plain CPU session at batch 1 (no batcher, no HTTP), softmax in float64, top-k."""

    def __init__(
        self,
        model_path: Path,
        *,
        max_image_bytes: int = 20 * 2**20,
        max_image_pixels: int = 40_000_000,
        intra_op_threads: int = 1,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.metadata = read_metadata(self.session)
        self.preprocess = ImagePreprocessor(
            self.metadata, max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels
        )

    def probabilities(self, data: bytes) -> np.ndarray:
        return softmax(self.session.run(["logits"], {INPUT_NAME: self.preprocess(data)[None]})[0][0])

    def assert_matches(self, predictions: list[dict], data: bytes, k: int = 5) -> None:
        """The response's top-k indices and probabilities equal the offline ones (1e-4)."""
        probabilities = self.probabilities(data)
        expected = np.argsort(-probabilities, kind="stable")[:k]
        got = [p["index"] for p in predictions]
        assert len(got) == k
        np.testing.assert_allclose([p["probability"] for p in predictions], probabilities[got], atol=1e-4)
        if got != expected.tolist():
            # Batched and single-image runs differ in the last float32 bits; that may only reorder
            # classes whose offline probabilities tie to 1e-6 (the random-init model's are ~1e-3).
            np.testing.assert_allclose(probabilities[got], probabilities[expected], rtol=0, atol=1e-6)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The documented status with the service's JSON error shape."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
