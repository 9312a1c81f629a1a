"""Tiny ONNX models for the session factory, built once per session with `onnx.helper`."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from runtime.metadata import INPUT_NAME, ModelMetadata
from tests.support.metadata import make_metadata

IMAGE_SIZE = 8


def _relu_model(*, static_size: int | None, props: dict[str, str] | None = None) -> onnx.ModelProto:
    """`images` [B,3,S,S] -> `logits` = relu(images): small enough to load in milliseconds."""
    side: int | str = static_size if static_size is not None else "side"
    images = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, side, side])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, side, side])
    graph = helper.make_graph(
        [helper.make_node("Relu", [INPUT_NAME], ["logits"])], "tiny", [images], [logits]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by every onnxruntime >= 1.18
    if props:
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def metadata() -> ModelMetadata:
    return make_metadata(
        variant="transxnet_t", image_size=12, num_classes=3, labels=("cat", "dog", "fish"), embed_dim=4
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(_relu_model(static_size=IMAGE_SIZE), path)
    return path


@pytest.fixture(scope="session")
def tiny_model_with_metadata(tmp_path_factory: pytest.TempPathFactory, metadata: ModelMetadata) -> Path:
    """Dynamic spatial dims, so the image size can only come from the metadata."""
    path = tmp_path_factory.mktemp("models") / "tiny_meta.onnx"
    onnx.save(_relu_model(static_size=None, props=metadata.to_props()), path)
    return path
