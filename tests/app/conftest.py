"""Session-wide fixtures for the service's tests: a fake model built once, the asyncio backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.fake_model import build_fake_model


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def fake_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_model(tmp_path_factory.mktemp("model") / "transxnet_fake.onnx")
