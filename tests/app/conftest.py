"""Session-wide fixtures for the service's tests: a fake model built once, one running app (ASGI,
lifespan entered) shared by the tests that need no special runner, and a factory for apps that do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from app.imaging import ImagePreprocessor
from app.main import RunnerOverride, create_app
from app.settings import Settings
from runtime.metadata import INPUT_NAME
from tests.support.fake_model import build_fake_model, fake_metadata
from tests.support.numerics import softmax

#: Small limits so the limit tests need small payloads.
TEST_LIMITS = {
    "max_image_bytes": 200_000,
    "max_image_pixels": 1_000_000,
    "max_images_per_request": 16,
    "max_queue_size": 64,
}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def fake_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_model(tmp_path_factory.mktemp("model") / "transxnet_fake.onnx")


def make_settings(model_path: Path, **overrides: object) -> Settings:
    options: dict[str, object] = {
        "model_path": model_path,
        "providers": "cpu",
        "max_batch_size": 8,
        "max_batch_delay_ms": 20,
        "preprocess_workers": 2,
        "intra_op_threads": 1,
        # No gRPC server in-process: parallel apps would share port 8001, and its protobuf names
        # would clash with tritonclient.grpc's (app/v2/grpc/__init__.py). Its tests run processes.
        "grpc_port": 0,
        **TEST_LIMITS,
    }
    options.update(overrides)
    return Settings(**options)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll `predicate` on the running loop; the timeout only bounds a failing test."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while (await client.get("/readyz")).status_code != 200:
        if loop.time() > end:
            raise AssertionError("the app never became ready")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, runner: RunnerOverride | None = None, *, ready: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An app with its lifespan entered and an httpx client on it."""
    app = create_app(settings, runner=runner)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service", timeout=60) as client:
            client.app = app  # type: ignore[attr-defined]
            if ready:
                await wait_ready(client)
            yield client


@pytest.fixture(scope="session")
async def client(fake_model_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings(fake_model_path)) as client:
        yield client


class Reference:
    """Independent reference: the preprocessor plus a plain ORT session, one image at a time."""

    def __init__(self, model_path: Path) -> None:
        self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        self.preprocess = ImagePreprocessor(
            fake_metadata(),
            max_image_bytes=TEST_LIMITS["max_image_bytes"],
            max_image_pixels=TEST_LIMITS["max_image_pixels"],
        )

    def outputs(self, data: bytes, names: list[str]) -> dict[str, np.ndarray]:
        values = self.session.run(names, {INPUT_NAME: self.preprocess(data)[None]})
        return {name: value[0] for name, value in zip(names, values, strict=True)}

    def probabilities(self, data: bytes) -> np.ndarray:
        return self.probabilities_of(self.preprocess(data))

    def probabilities_of(self, pixels: np.ndarray) -> np.ndarray:
        """Softmax of the logits for one already-preprocessed (3, S, S) input."""
        (logits,) = self.session.run(["logits"], {INPUT_NAME: pixels[None]})
        return softmax(logits[0])


def assert_matches_reference(result: dict, probabilities: np.ndarray, k: int = 5) -> None:
    """One /classify result against the reference's probabilities: top-k order, labels, values."""
    expected = np.argsort(-probabilities, kind="stable")[:k]
    predictions = result["predictions"]
    assert [p["index"] for p in predictions] == expected.tolist()
    assert [p["label"] for p in predictions] == [f"class_{i}" for i in expected]
    np.testing.assert_allclose([p["probability"] for p in predictions], probabilities[expected], rtol=1e-4)


@pytest.fixture(scope="session")
def reference(fake_model_path: Path) -> Reference:
    return Reference(fake_model_path)
