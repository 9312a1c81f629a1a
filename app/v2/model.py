"""The Open Inference Protocol's model semantics, shared by its HTTP and gRPC transports: which names
and versions resolve, the model's metadata, and inference from a parsed `InferRequest` to the
outputs to send.

The model is served under its metadata variant (e.g. `transxnet_t`) and, as an alias, the ONNX
file's stem; its only version is "1". Two inputs, exactly one per request:

- `images` FP32 `[N, 3, S, S]`, already preprocessed: the same tensor as the Triton repository that
  `export/triton.py` writes, so one client works against both;
- `image_bytes` BYTES `[N]` or `[N, 1]`: encoded JPEG/PNG/... files that go through the service's own
  preprocessing (same limits and errors as /classify).

Every request joins the same dynamic batcher as /classify and /features. Without `outputs` all six
outputs come back (Triton's default); name the ones you need, the stage maps are large.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.errors import ModelNotFoundError, ProtocolError
from app.pipeline import ClientGone, Job
from app.service import Service
from app.v2.protocol import (
    BYTES,
    InferRequest,
    RequestedOutput,
    RequestInput,
    ResponseOutput,
    classification_strings,
    decode_bytes,
    decode_numeric,
)
from runtime.metadata import INPUT_NAME, OUTPUT_NAMES

#: The encoded-image input (BYTES), the alternative to the preprocessed `images` tensor.
IMAGE_BYTES_INPUT = "image_bytes"
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "transxnet-serve"


def resolve_model(service: Service, name: str, version: str = "") -> str:
    """The canonical model name, or `ModelNotFoundError` (unknown name or version) /
    `ProtocolError` (a version that is not an integer)."""
    if name not in service.model_names:
        raise ModelNotFoundError(f"unknown model: '{name}'; this server serves '{service.metadata.variant}'")
    if version:
        try:
            number = int(version)
        except ValueError:
            raise ProtocolError(
                f"failed to get model version from specified version string '{version}'"
            ) from None
        if str(number) != MODEL_VERSION:
            raise ModelNotFoundError(
                f"unknown version '{version}' of model '{name}'; available: [\"{MODEL_VERSION}\"]"
            )
    return service.metadata.variant


def output_dims(service: Service, output: str) -> list[int]:
    """An output's declared shape with every symbolic dimension (batch first) as -1."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in service.output_shapes.get(output, [])]


def model_metadata(service: Service, name: str) -> dict[str, Any]:
    size = service.metadata.image_size
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [
            {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, size, size]},
            {"name": IMAGE_BYTES_INPUT, "datatype": BYTES, "shape": [-1, 1]},
        ],
        "outputs": [
            {"name": output, "datatype": "FP32", "shape": [-1, *output_dims(service, output)[1:]]}
            for output in OUTPUT_NAMES
        ],
    }


def _single_input(infer: InferRequest, model: str) -> RequestInput:
    known = (INPUT_NAME, IMAGE_BYTES_INPUT)
    for item in infer.inputs:
        if item.name not in known:
            raise ProtocolError(
                f"unexpected inference input '{item.name}' for model '{model}': "
                f"send one of {', '.join(known)}"
            )
    if len(infer.inputs) != 1:
        raise ProtocolError(
            f"expected exactly one input for model '{model}' ({INPUT_NAME} FP32 tensors or "
            f"{IMAGE_BYTES_INPUT} BYTES encoded images), got {len(infer.inputs)}"
        )
    return infer.inputs[0]


def _batch_size(item: RequestInput, model: str, job: Job) -> int:
    count = item.shape[0] if item.shape else 0
    if count < 1:
        raise ProtocolError(f"input '{item.name}' of model '{model}' needs a batch of at least 1")
    job.limits.check_image_count(count, f"input '{item.name}'")
    return count


def _tensor_images(service: Service, item: RequestInput, model: str, job: Job) -> list[np.ndarray]:
    size = service.metadata.image_size
    if item.datatype != "FP32":
        raise ProtocolError(
            f"inference input '{INPUT_NAME}' data-type is '{item.datatype}', but model '{model}' "
            "expects 'FP32'"
        )
    if len(item.shape) != 4 or item.shape[1:] != (3, size, size):
        raise ProtocolError(
            f"unexpected shape for input '{INPUT_NAME}' for model '{model}'. Expected "
            f"[-1,3,{size},{size}], got {list(item.shape)}"
        )
    _batch_size(item, model, job)
    batch = decode_numeric(item)
    if not np.isfinite(batch).all():
        raise ProtocolError(f"input '{INPUT_NAME}' holds NaN or infinity: send finite, normalised pixels")
    return list(batch)


def _encoded_images(item: RequestInput, model: str, job: Job) -> list[bytes]:
    if item.datatype != BYTES:
        raise ProtocolError(
            f"inference input '{IMAGE_BYTES_INPUT}' data-type is '{item.datatype}', but model '{model}' "
            "expects 'BYTES'"
        )
    if len(item.shape) not in (1, 2) or (len(item.shape) == 2 and item.shape[1] != 1):
        raise ProtocolError(
            f"unexpected shape for input '{IMAGE_BYTES_INPUT}' for model '{model}'. Expected [-1] or "
            f"[-1,1] (one encoded image per row), got {list(item.shape)}"
        )
    _batch_size(item, model, job)
    blobs = decode_bytes(item)
    for index, blob in enumerate(blobs):
        job.limits.check_image_bytes(len(blob), f"image {index} of input '{IMAGE_BYTES_INPUT}'")
    return blobs


def requested_outputs(infer: InferRequest, model: str, num_classes: int) -> list[RequestedOutput]:
    """What to send back: every output when none is named; classification counts checked."""
    if infer.outputs is None:
        return [RequestedOutput(name) for name in OUTPUT_NAMES]
    if not infer.outputs:
        raise ProtocolError("'outputs' is empty: leave it out for every output, or name some")
    for output in infer.outputs:
        if output.name not in OUTPUT_NAMES:
            raise ProtocolError(
                f"unexpected inference output '{output.name}' for model '{model}': choose from "
                f"{', '.join(OUTPUT_NAMES)}"
            )
        # More classes than the model has would only repeat the same ranking at length.
        output.classification = min(output.classification, num_classes)
    return infer.outputs


async def infer(
    service: Service,
    job: Job,
    model: str,
    request: InferRequest,
    *,
    binary_default: bool = False,
    client_gone: ClientGone | None = None,
) -> list[ResponseOutput]:
    """Check the request against the model, run it through the pipeline and shape the outputs.

    `binary_default`: whether outputs go out as raw bytes unless the request says otherwise (HTTP
    sends JSON by default; gRPC always sends raw contents)."""
    requested = requested_outputs(request, model, service.metadata.num_classes)
    item = _single_input(request, model)
    names = [output.name for output in requested]
    if item.name == INPUT_NAME:
        results = await job.run_tensors(
            _tensor_images(service, item, model, job), names, client_gone=client_gone
        )
    else:
        results = await job.run_encoded(_encoded_images(item, model, job), names, client_gone=client_gone)
    outputs = []
    for output in requested:
        values = np.stack([result[output.name] for result in results])
        default = binary_default or request.binary_data_output
        binary = default if output.binary is None else output.binary
        if output.classification:
            labels = service.metadata.labels if output.name == "logits" else None
            strings = classification_strings(values, output.classification, labels)
            outputs.append(ResponseOutput(output.name, BYTES, strings, binary))
        else:
            outputs.append(ResponseOutput(output.name, "FP32", values.astype(np.float32, copy=False), binary))
    return outputs


def model_config(service: Service, name: str) -> dict[str, Any]:
    """Triton's model configuration (its JSON field names) for what this server really does.

    Both inputs are optional because a request sends exactly one of them. `dims` leave out the batch
    axis (`max_batch_size` > 0). The batcher prefers no size below its maximum: it runs what is queued
    once the batch is full or the first image has waited `max_batch_delay_ms`.
    """
    settings = service.settings
    size = service.metadata.image_size
    on_gpu = service.loaded.providers[0] != "CPUExecutionProvider"
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": settings.max_batch_size,
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": [3, size, size],
                "optional": True,
            },
            {"name": IMAGE_BYTES_INPUT, "data_type": "TYPE_STRING", "dims": [1], "optional": True},
        ],
        "output": [
            {"name": output, "data_type": "TYPE_FP32", "dims": output_dims(service, output)[1:]}
            for output in OUTPUT_NAMES
        ],
        "dynamic_batching": {
            "preferred_batch_size": [settings.max_batch_size],
            "max_queue_delay_microseconds": round(settings.max_batch_delay_ms * 1000),
        },
        "instance_group": [
            {
                "name": name,
                "kind": "KIND_GPU" if on_gpu else "KIND_CPU",
                "count": settings.model_instances,
            }
        ],
        "default_model_filename": service.model_path.name,
    }


def model_statistics(service: Service, name: str | None = None) -> dict[str, Any]:
    """Triton's `{"model_stats": [...]}` for the one model (for `name`, or when none is given)."""
    canonical = service.metadata.variant if name is None else name
    return {"model_stats": [service.metrics.statistics.as_triton(canonical, MODEL_VERSION)]}
