"""A tiny ONNX stand-in for TransXNet with the real contract (input `images [N,3,224,224]`, outputs
`logits`, `pooled`, `stage1..4`, real `ModelMetadata` in `metadata_props`), built with onnx.helper in
well under a second so the service's tests do not wait for a real export.

Logits are a fixed random projection of the image's 7x7 pooled maps, so different images give
different top-k; stages are average-pool + 1x1-conv pyramids at the real strides (4, 8, 16, 32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.metadata import INPUT_NAME, ModelMetadata
from tests.support.metadata import make_metadata

IMAGE_SIZE = 224
STAGE_CHANNELS = (8, 16, 24, 32)
NUM_CLASSES = 1000


def fake_metadata() -> ModelMetadata:
    return make_metadata(
        variant="transxnet_fake",
        image_size=IMAGE_SIZE,
        num_classes=NUM_CLASSES,
        embed_dim=STAGE_CHANNELS[-1],
        exporter="tests/support/fake_model.py",
    )


def build_fake_model(path: Path, *, seed: int = 0) -> Path:
    """Write the fake model to `path` and return it."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    previous, channels = "x0", 3
    nodes.append(helper.make_node("AveragePool", [INPUT_NAME], ["x0"], kernel_shape=[4, 4], strides=[4, 4]))
    for stage, out_channels in enumerate(STAGE_CHANNELS, start=1):
        source = previous
        if stage > 1:
            source = f"p{stage}"
            nodes.append(
                helper.make_node("AveragePool", [previous], [source], kernel_shape=[2, 2], strides=[2, 2])
            )
        w = weight(f"w{stage}", rng.normal(0, 1 / np.sqrt(channels), (out_channels, channels, 1, 1)))
        b = weight(f"b{stage}", rng.normal(0, 0.1, out_channels))
        nodes.append(helper.make_node("Conv", [source, w, b], [f"stage{stage}"]))
        previous, channels = f"stage{stage}", out_channels
    nodes.append(helper.make_node("GlobalAveragePool", ["stage4"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["pooled"], axis=1))
    nodes.append(helper.make_node("Flatten", ["stage4"], ["flat"], axis=1))
    features = STAGE_CHANNELS[-1] * 7 * 7
    head = weight("head", rng.normal(0, 4 / np.sqrt(features), (features, NUM_CLASSES)))
    nodes.append(helper.make_node("MatMul", ["flat", head], ["logits"]))

    def out(name: str, *dims: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *dims])

    size = IMAGE_SIZE
    outputs = [out("logits", NUM_CLASSES), out("pooled", STAGE_CHANNELS[-1])]
    outputs += [
        out(f"stage{i}", c, size // (4 * 2 ** (i - 1)), size // (4 * 2 ** (i - 1)))
        for i, c in enumerate(STAGE_CHANNELS, start=1)
    ]
    graph = helper.make_graph(
        nodes,
        "transxnet_fake",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, fake_metadata().to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
