"""A Triton Inference Server model repository for the exported ONNX file.

For teams that already run Triton: the same `model.onnx` the FastAPI service serves, with a
`config.pbtxt` for Triton's ONNX Runtime backend (`platform: "onnxruntime_onnx"`). Field names follow
Triton's `model_config.proto`; the TensorRT accelerator's parameter keys follow the onnxruntime_backend
README ("Parameter mapping between ONNX Runtime and Triton ONNXRuntime Backend"): `precision_mode`,
`max_workspace_size_bytes`, `trt_engine_cache_enable`/`_path`, `trt_timing_cache_enable`/`_path` and
`trt_profile_min_shapes`/`opt`/`max` ("input:dim1xdim2..."), passed through to the TensorRT EP. The
profile shapes include the batch dimension, because the backend hands ORT the batched tensor; without
an explicit profile TensorRT would rebuild its engine whenever a larger batch than seen so far
arrives. `model_warmup` at the max batch size makes Triton build that engine while loading the model,
never at request time.

The tensor dims are read from the ONNX graph (this is export-side code, so `onnx` is allowed) and
cross-checked with the metadata, so a config can never disagree with the file it serves.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Literal

import onnx
from onnx import TensorProto

from runtime.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
DEFAULT_TRT_CACHE_DIR = "/tmp/triton_trt_cache"

#: ONNX element type -> Triton data type (model_config.proto `DataType`).
_TRITON_TYPES = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.BOOL: "TYPE_BOOL",
}


class TritonRepositoryError(ValueError):
    """The ONNX file or the options cannot make a valid Triton model; the message says which part."""


def default_preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from 4 up to the max batch, and the max batch itself: sizes worth waiting for."""
    sizes = {size for size in (4, 8, 16, 32, 64, 128, 256) if size <= max_batch_size}
    return tuple(sorted(sizes | {max_batch_size}))


def read_tensor_specs(onnx_path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (Triton data type, dims without the batch dimension) for the graph's inputs and outputs.

    The first dimension must be the dynamic batch; a symbolic non-batch dimension becomes -1, as
    Triton writes variable-size dims.
    """
    model = onnx.load(str(onnx_path), load_external_data=False)
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    initializers = {init.name for init in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in initializers:
            continue  # old exporters list weights as inputs
        tensor = value.type.tensor_type
        if tensor.elem_type not in _TRITON_TYPES:
            raise TritonRepositoryError(
                f"{onnx_path}: tensor {value.name!r} has ONNX element type "
                f"{TensorProto.DataType.Name(tensor.elem_type)}, which this writer does not map to Triton"
            )
        dims = tensor.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise TritonRepositoryError(
                f"{onnx_path}: tensor {value.name!r} has no dynamic batch dimension "
                f"(shape {[d.dim_value or d.dim_param for d in dims]}); export with a dynamic batch axis"
            )
        rest = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
        specs[value.name] = (_TRITON_TYPES[tensor.elem_type], rest)
    return specs


def _check_against_metadata(specs: dict[str, tuple[str, tuple[int, ...]]], metadata: ModelMetadata) -> None:
    missing = [name for name in (INPUT_NAME, *OUTPUT_NAMES) if name not in specs]
    if missing:
        raise TritonRepositoryError(
            f"the ONNX graph lacks tensors {missing}; it has {sorted(specs)} "
            "(re-export with `python -m export`)"
        )
    expected = {
        INPUT_NAME: (3, metadata.image_size, metadata.image_size),
        "logits": (metadata.num_classes,),
        "pooled": (metadata.embed_dim,),
    }
    for name, dims in expected.items():
        if specs[name][1] != dims:
            raise TritonRepositoryError(
                f"tensor {name!r} has dims {list(specs[name][1])} in the ONNX graph but the metadata "
                f"implies {list(dims)}: the file and its metadata disagree"
            )


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def render_config(
    specs: dict[str, tuple[str, tuple[int, ...]]],
    *,
    model_name: str,
    max_batch_size: int,
    preferred_batch_sizes: tuple[int, ...],
    max_queue_delay_us: int,
    fp16: bool,
    instance_kind: Literal["KIND_GPU", "KIND_CPU"],
    instance_count: int,
    trt_cache_dir: str | None,
    trt_workspace_bytes: int,
) -> str:
    """The `config.pbtxt` text (protobuf text format of Triton's `ModelConfig`)."""
    q = json.dumps  # a JSON string literal is a valid protobuf text-format string for these values
    in_type, in_dims = specs[INPUT_NAME]
    lines = [
        f"name: {q(model_name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        f"    name: {q(INPUT_NAME)}",
        f"    data_type: {in_type}",
        "    format: FORMAT_NCHW",
        f"    dims: {_dims(in_dims)}",
        "  }",
        "]",
        "output [",
    ]
    for index, name in enumerate(OUTPUT_NAMES):
        out_type, out_dims = specs[name]
        lines += ["  {", f"    name: {q(name)}", f"    data_type: {out_type}", f"    dims: {_dims(out_dims)}"]
        if name == "logits":
            lines.append(f"    label_filename: {q(LABELS_FILE)}")  # Triton's classification extension
        lines.append("  }," if index < len(OUTPUT_NAMES) - 1 else "  }")
    lines += [
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: {_dims(preferred_batch_sizes)}",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {instance_count}",
        f"    kind: {instance_kind}",
        "  }",
        "]",
    ]
    if instance_kind == "KIND_GPU":
        c, h, w = in_dims
        profile = {
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x{c}x{h}x{w}",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:{max_batch_size}x{c}x{h}x{w}",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch_size}x{c}x{h}x{w}",
        }
        parameters = {
            "precision_mode": "FP16" if fp16 else "FP32",
            "max_workspace_size_bytes": str(trt_workspace_bytes),
            **profile,
        }
        if trt_cache_dir is not None:
            parameters |= {
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": trt_cache_dir,
                "trt_timing_cache_enable": "1",
                "trt_timing_cache_path": trt_cache_dir,
            }
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator [",
            "      {",
            '        name: "tensorrt"',
        ]
        lines += [f"        parameters {{ key: {q(k)} value: {q(v)} }}" for k, v in parameters.items()]
        lines += ["      }", "    ]", "  }", "}"]
    lines += [
        "model_warmup [",
        "  {",
        f'    name: "max_batch_{max_batch_size}"',
        f"    batch_size: {max_batch_size}",
        "    inputs {",
        f"      key: {q(INPUT_NAME)}",
        "      value {",
        f"        data_type: {in_type}",
        f"        dims: {_dims(in_dims)}",
        "        zero_data: true",
        "      }",
        "    }",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    repo_dir: str | Path,
    onnx_path: str | Path,
    metadata: ModelMetadata,
    *,
    model_name: str = "transxnet_t",
    version: int = 1,
    max_batch_size: int = 16,
    preferred_batch_sizes: tuple[int, ...] | list[int] | None = None,
    max_queue_delay_us: int = 2000,
    fp16: bool = True,
    instance_kind: Literal["KIND_GPU", "KIND_CPU"] = "KIND_GPU",
    instance_count: int = 1,
    trt_cache_dir: str | None = DEFAULT_TRT_CACHE_DIR,
    trt_workspace_bytes: int = 4 << 30,
) -> Path:
    """Write `repo_dir/<model_name>/{config.pbtxt, labels.txt, <version>/model.onnx}`; returns the
    model directory. Serve with `tritonserver --model-repository repo_dir`.

    `trt_cache_dir` is a path inside the Triton container (mount a volume there to keep engines across
    restarts; None disables the caches). With `instance_kind="KIND_CPU"` no TensorRT block is written.
    """
    onnx_file = Path(onnx_path)
    if not onnx_file.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_file}")
    if max_batch_size < 1:
        raise TritonRepositoryError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if max_queue_delay_us < 0:
        raise TritonRepositoryError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    if instance_count < 1:
        raise TritonRepositoryError(f"instance_count must be >= 1, got {instance_count}")
    if instance_kind not in ("KIND_GPU", "KIND_CPU"):
        raise TritonRepositoryError(f"instance_kind must be KIND_GPU or KIND_CPU, got {instance_kind!r}")
    if version < 1:
        raise TritonRepositoryError(f"version must be >= 1, got {version}")
    if not model_name or "/" in model_name or model_name in (".", ".."):
        raise TritonRepositoryError(f"model_name {model_name!r} must be a plain directory name")
    preferred = (
        default_preferred_batch_sizes(max_batch_size)
        if preferred_batch_sizes is None
        else tuple(sorted(set(preferred_batch_sizes)))
    )
    if not preferred or preferred[0] < 1 or preferred[-1] > max_batch_size:
        raise TritonRepositoryError(
            f"preferred_batch_sizes {list(preferred_batch_sizes or [])} must be non-empty and within "
            f"1..max_batch_size ({max_batch_size})"
        )
    bad_labels = [label for label in metadata.labels if "\n" in label or "\r" in label]
    if bad_labels:
        raise TritonRepositoryError(f"labels must be single lines for {LABELS_FILE}: {bad_labels[:3]}")

    specs = read_tensor_specs(onnx_file)
    _check_against_metadata(specs, metadata)
    config = render_config(
        specs,
        model_name=model_name,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred,
        max_queue_delay_us=max_queue_delay_us,
        fp16=fp16,
        instance_kind=instance_kind,
        instance_count=instance_count,
        trt_cache_dir=trt_cache_dir,
        trt_workspace_bytes=trt_workspace_bytes,
    )

    model_dir = Path(repo_dir) / model_name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, version_dir / "model.onnx")
    (model_dir / LABELS_FILE).write_text("\n".join(metadata.labels) + "\n", encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    logger.info(
        "wrote Triton model %s (version %d, max batch %d, %s) to %s",
        model_name,
        version,
        max_batch_size,
        "TensorRT " + ("FP16" if fp16 else "FP32") if instance_kind == "KIND_GPU" else "CPU",
        model_dir,
    )
    return model_dir
