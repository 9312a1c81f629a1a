"""Shared pieces of the reliability suite: a real service process (plain `python -m app` or the fault
server with slow/failing runners), distinct deterministic test photos, and the offline reference
(ONNX Runtime directly on `ImagePreprocessor(metadata)(bytes)` at batch 1) every answer is held to.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from app.imaging import ImagePreprocessor
from runtime.metadata import INPUT_NAME
from runtime.session import read_metadata
from tests.app.fake_model import build_fake_model
from tests.numerics import softmax
from tests.processes import ROOT, free_port, service_env, wait_for

PHOTOS = ROOT / "tests" / "fixtures" / "preprocess" / "photos"
JPEG = {"content-type": "image/jpeg"}
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="session")
def reliability_fake_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny stand-in model: for tests where the runner's behaviour, not the network, matters."""
    return build_fake_model(tmp_path_factory.mktemp("reliability-model") / "transxnet_fake.onnx")


# --------------------------------------------------------------------------- the service process


@dataclass
class ServiceProcess:
    """A running service: its base URL, its process, and its log (read after it stopped)."""

    base: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return self.base + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics (e.g. `transxnet_queue_depth`)."""
        for line in httpx.get(self.url("/metrics"), timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def labelled_metric(self, name: str, **labels: str) -> float:
        """The sum of `name` samples whose labels include `labels` (0 if none)."""
        total = 0.0
        for line in httpx.get(self.url("/metrics"), timeout=10).text.splitlines():
            if not line.startswith(name + "{"):
                continue
            head, value = line.rsplit(" ", 1)
            if all(f'{key}="{val}"' in head for key, val in labels.items()):
                total += float(value)
        return total

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        wait_for(predicate, timeout_s, what=what, process=self.process, log=self.log)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait: the exit code (a clean drain is 0)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def _ready(service: ServiceProcess) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(service.url("/readyz"), timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def service_process(
    model_path: Path, *, helper_args: list[str] | None = None, ready_timeout_s: float = 300, **settings: str
) -> Iterator[ServiceProcess]:
    """Start `python -m app` (or the fault server when `helper_args` is given) on a free port with
    TRANSXNET_* `settings` (keys without the prefix), wait for /readyz 200, kill it at the end."""
    port = free_port()
    extra = {f"TRANSXNET_{key.upper()}": str(value) for key, value in settings.items()}
    env = service_env(model_path, TRANSXNET_PORT=str(port), TRANSXNET_LOG_LEVEL="warning", **extra)
    args = [sys.executable, "-m", "app"]
    if helper_args is not None:
        args = [sys.executable, "-m", "tests.reliability.fault_server", *helper_args]
    handle, log_name = tempfile.mkstemp(prefix="reliability-service-", suffix=".log")
    with os.fdopen(handle, "w") as log:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    service = ServiceProcess(f"http://127.0.0.1:{port}", process, Path(log_name))
    try:
        service.wait_until(lambda: _ready(service), ready_timeout_s, "/readyz 200")
        yield service
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(log_name)


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
