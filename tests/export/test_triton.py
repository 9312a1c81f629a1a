"""The Triton repository: parsed with Triton's own ModelConfig schema, checked against the ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from export.triton import TritonRepositoryError, write_triton_repository
from model.weights import eval_cfg
from runtime.metadata import ModelMetadata

SIZE = 32
NUM_CLASSES = 10
#: The real graph's tensor names with small, distinct shapes (batch dimension left out).
EXPECTED_DIMS = {
    "logits": [NUM_CLASSES],
    "pooled": [8],
    "stage1": [2, 8, 8],
    "stage2": [4, 4, 4],
    "stage3": [6, 2, 2],
    "stage4": [8, 1, 1],
}
LABELS = tuple(f"class {i}" for i in range(NUM_CLASSES))


def _make_model(*, dynamic_batch: bool = True) -> onnx.ModelProto:
    """images -> four strided convs (stage1..4) -> pool (pooled) -> matmul (logits)."""
    batch: str | int = "batch" if dynamic_batch else 1
    nodes, inits = [], []
    channels = {"stage1": (2, 4), "stage2": (4, 8), "stage3": (6, 16), "stage4": (8, 32)}
    for name, (c, stride) in channels.items():
        weight = numpy_helper.from_array(np.full((c, 3, stride, stride), 0.01, np.float32), f"{name}_w")
        inits.append(weight)
        nodes.append(
            helper.make_node(
                "Conv", ["images", weight.name], [name], kernel_shape=[stride] * 2, strides=[stride] * 2
            )
        )
    nodes.append(helper.make_node("GlobalAveragePool", ["stage4"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["pooled"]))
    head = numpy_helper.from_array(np.ones((8, NUM_CLASSES), np.float32), "head_w")
    inits.append(head)
    nodes.append(helper.make_node("MatMul", ["pooled", "head_w"], ["logits"]))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *dims])
        for name, dims in EXPECTED_DIMS.items()
    ]
    graph = helper.make_graph(nodes, "tiny_transxnet", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # declared shapes are the computed ones
    return model


@pytest.fixture(scope="session")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save(_make_model(), path)
    return path


@pytest.fixture(scope="session")
def metadata() -> ModelMetadata:
    release = eval_cfg("transxnet_t", 224)  # preprocessing as the export writes it, not defaults
    return ModelMetadata(
        variant="transxnet_t",
        image_size=SIZE,
        crop_pct=release.crop_pct,
        interpolation=release.interpolation,
        mean=release.mean,
        std=release.std,
        num_classes=NUM_CLASSES,
        labels=LABELS,
        weights="random-init seed 0",
        pretrained=False,
        embed_dim=8,
    )


def _parse(model_dir: Path) -> model_config_pb2.ModelConfig:
    # text_format.Parse rejects unknown fields and wrong types: Triton's schema is the judge
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _trt_parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    return dict(accelerator.parameters)


@pytest.mark.parametrize("max_batch", [1, 8, 16])
def test_config_matches_the_onnx_graph(
    tmp_path: Path, onnx_file: Path, metadata: ModelMetadata, max_batch: int
) -> None:
    model_dir = write_triton_repository(
        tmp_path, onnx_file, metadata, model_name="tx", max_batch_size=max_batch
    )
    assert model_dir == tmp_path / "tx"
    config = _parse(model_dir)
    assert config.name == "tx"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == max_batch
    (images,) = config.input
    assert images.name == "images"
    assert images.data_type == model_config_pb2.TYPE_FP32
    assert images.format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert list(images.dims) == [3, SIZE, SIZE]
    assert {out.name: list(out.dims) for out in config.output} == EXPECTED_DIMS
    assert all(out.data_type == model_config_pb2.TYPE_FP32 for out in config.output)
    assert [out.name for out in config.output] == ["logits", "pooled", "stage1", "stage2", "stage3", "stage4"]


def test_model_file_and_labels_are_written(tmp_path: Path, onnx_file: Path, metadata: ModelMetadata) -> None:
    model_dir = write_triton_repository(tmp_path, onnx_file, metadata, version=3)
    assert (model_dir / "3" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    config = _parse(model_dir)
    logits = next(out for out in config.output if out.name == "logits")
    assert logits.label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text(encoding="utf-8").splitlines() == list(LABELS)
    assert all(not out.label_filename for out in config.output if out.name != "logits")


def test_warmup_runs_the_max_batch_at_load(tmp_path: Path, onnx_file: Path, metadata: ModelMetadata) -> None:
    config = _parse(write_triton_repository(tmp_path, onnx_file, metadata, max_batch_size=12))
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 12
    sample = warmup.inputs["images"]
    assert sample.data_type == model_config_pb2.TYPE_FP32
    assert list(sample.dims) == [3, SIZE, SIZE]
    assert sample.zero_data


@pytest.mark.parametrize(
    ("max_batch", "expected"), [(1, [1]), (6, [4, 6]), (16, [4, 8, 16]), (24, [4, 8, 16, 24])]
)
def test_default_preferred_batch_sizes_lie_within_one_to_max(
    tmp_path: Path, onnx_file: Path, metadata: ModelMetadata, max_batch: int, expected: list[int]
) -> None:
    config = _parse(write_triton_repository(tmp_path, onnx_file, metadata, max_batch_size=max_batch))
    sizes = list(config.dynamic_batching.preferred_batch_size)
    assert sizes == expected
    assert all(1 <= size <= max_batch for size in sizes)


def test_explicit_batching_options_are_written(
    tmp_path: Path, onnx_file: Path, metadata: ModelMetadata
) -> None:
    config = _parse(
        write_triton_repository(
            tmp_path,
            onnx_file,
            metadata,
            max_batch_size=8,
            preferred_batch_sizes=[8, 2, 2],
            max_queue_delay_us=750,
            instance_count=2,
        )
    )
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 750
    (group,) = config.instance_group
    assert group.count == 2
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


@pytest.mark.parametrize("preferred", [[0, 4], [4, 17], []])
def test_preferred_batch_sizes_outside_the_range_are_rejected(
    tmp_path: Path, onnx_file: Path, metadata: ModelMetadata, preferred: list[int]
) -> None:
    with pytest.raises(TritonRepositoryError, match=r"1\.\.max_batch_size \(16\)"):
        write_triton_repository(
            tmp_path, onnx_file, metadata, max_batch_size=16, preferred_batch_sizes=preferred
        )


def test_tensorrt_profile_spans_batch_one_to_max_with_caches(
    tmp_path: Path, onnx_file: Path, metadata: ModelMetadata
) -> None:
    config = _parse(
        write_triton_repository(tmp_path, onnx_file, metadata, max_batch_size=16, trt_cache_dir="/cache/trt")
    )
    params = _trt_parameters(config)
    assert params["precision_mode"] == "FP16"
    assert params["trt_profile_min_shapes"] == f"images:1x3x{SIZE}x{SIZE}"
    assert params["trt_profile_opt_shapes"] == f"images:16x3x{SIZE}x{SIZE}"
    assert params["trt_profile_max_shapes"] == f"images:16x3x{SIZE}x{SIZE}"
    assert params["trt_engine_cache_enable"] == "1"
    assert params["trt_engine_cache_path"] == "/cache/trt"
    assert params["trt_timing_cache_enable"] == "1"
    assert params["trt_timing_cache_path"] == "/cache/trt"
    assert int(params["max_workspace_size_bytes"]) > 0


def test_fp32_and_no_cache(tmp_path: Path, onnx_file: Path, metadata: ModelMetadata) -> None:
    params = _trt_parameters(
        _parse(write_triton_repository(tmp_path, onnx_file, metadata, fp16=False, trt_cache_dir=None))
    )
    assert params["precision_mode"] == "FP32"
    assert not any(key.startswith(("trt_engine_cache", "trt_timing_cache")) for key in params)


def test_cpu_instances_get_no_tensorrt_block(
    tmp_path: Path, onnx_file: Path, metadata: ModelMetadata
) -> None:
    config = _parse(write_triton_repository(tmp_path, onnx_file, metadata, instance_kind="KIND_CPU"))
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert not config.HasField("optimization")
    assert config.model_warmup[0].batch_size == 16


def test_metadata_disagreeing_with_the_graph_is_rejected(
    tmp_path: Path, onnx_file: Path, metadata: ModelMetadata
) -> None:
    wrong = metadata.model_copy(update={"embed_dim": 9})
    with pytest.raises(TritonRepositoryError, match=r"'pooled' has dims \[8\].*\[9\]"):
        write_triton_repository(tmp_path, onnx_file, wrong)
    assert not (tmp_path / "transxnet_t").exists()  # nothing half-written


def test_graph_without_dynamic_batch_is_rejected(tmp_path: Path, metadata: ModelMetadata) -> None:
    static = tmp_path / "static.onnx"
    onnx.save(_make_model(dynamic_batch=False), static)
    with pytest.raises(TritonRepositoryError, match="no dynamic batch dimension"):
        write_triton_repository(tmp_path / "repo", static, metadata)
