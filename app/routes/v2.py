"""The Open Inference Protocol (KServe v2) endpoints, so Triton's clients (`tritonclient`, perf tools)
talk to this service unmodified: health, server and model metadata, and `infer`.

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

import zlib
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response

from app.errors import NotReadyError, PayloadTooLargeError, TooManyImagesError
from app.routes.health import StartupFailedError
from app.state import Service, ServiceState
from app.v2_protocol import (
    BYTES,
    EXTENSIONS,
    HEADER_LENGTH,
    InferRequest,
    ModelNotFoundError,
    ProtocolError,
    RequestedOutput,
    RequestInput,
    ResponseOutput,
    UnsupportedFeatureError,
    classification_strings,
    decode_bytes,
    decode_numeric,
    encode_infer_response,
    parse_infer_request,
)
from runtime.metadata import INPUT_NAME, OUTPUT_NAMES

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

#: The encoded-image input (BYTES), the alternative to the preprocessed `images` tensor.
IMAGE_BYTES_INPUT = "image_bytes"
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "transxnet-serve"
#: Bytes per tensor element a JSON body may spend ("-0.0123456789012345678," and nesting).
JSON_BYTES_PER_ELEMENT = 28
#: Room for the JSON header and framing on top of the tensor data.
HEADER_ALLOWANCE = 1 << 20

ModelName = Annotated[str, Path(description="The model's variant (e.g. transxnet_t) or ONNX file stem.")]
ModelVersion = Annotated[str, Path(description='The model version; only "1" exists.')]


def _model_names(service: ServiceState) -> tuple[str, ...]:
    assert service.metadata is not None
    return (service.metadata.variant, service.settings.model_path.stem)


def _resolve_model(service: ServiceState, name: str, version: str = "") -> str:
    """The canonical model name, or 404 (unknown name or version) / 400 (version not an integer)."""
    if service.metadata is None:
        raise NotReadyError("the model is not loaded yet")
    if name not in _model_names(service):
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


def _require_accepting(service: ServiceState, model: str) -> None:
    if not service.accepting:
        reason = "shutting down" if service.draining else "warming up"
        raise NotReadyError(f"model '{model}' is not ready: the server is {reason}")


def _dims(shape: list[Any]) -> list[int]:
    """ONNX Runtime's declared shape with every symbolic dimension (batch first) as -1."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _model_metadata(service: ServiceState, name: str) -> dict[str, Any]:
    metadata = service.metadata
    assert metadata is not None
    size = metadata.image_size
    shapes = service.output_shapes
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [
            {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, size, size]},
            {"name": IMAGE_BYTES_INPUT, "datatype": BYTES, "shape": [-1, 1]},
        ],
        "outputs": [
            {"name": output, "datatype": "FP32", "shape": [-1, *_dims(list(shapes.get(output, [])))[1:]]}
            for output in OUTPUT_NAMES
        ],
    }


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": list(EXTENSIONS)}


@router.get("/health/live", summary="Liveness (200 unless start-up failed for good)")
async def live(service: Service) -> Response:
    if service.startup_error is not None:
        raise StartupFailedError(f"start-up failed: {service.startup_error}")
    return Response(status_code=200)


@router.get("/health/ready", summary="Readiness (503 while warming up or draining)")
async def ready(service: Service) -> Response:
    if not service.accepting:
        reason = "shutting down" if service.draining else "warming up"
        raise NotReadyError(f"the server is {reason}")
    return Response(status_code=200)


@router.get("/models/{model_name}", summary="Model metadata")
async def model_metadata(service: Service, model_name: ModelName) -> dict[str, Any]:
    return _model_metadata(service, _resolve_model(service, model_name))


@router.get("/models/{model_name}/versions/{model_version}", summary="Model metadata (versioned)")
async def model_version_metadata(
    service: Service, model_name: ModelName, model_version: ModelVersion
) -> dict[str, Any]:
    return _model_metadata(service, _resolve_model(service, model_name, model_version))


@router.get("/models/{model_name}/ready", summary="Model readiness")
async def model_ready(service: Service, model_name: ModelName) -> Response:
    _require_accepting(service, _resolve_model(service, model_name))
    return Response(status_code=200)


@router.get("/models/{model_name}/versions/{model_version}/ready", summary="Model readiness (versioned)")
async def model_version_ready(
    service: Service, model_name: ModelName, model_version: ModelVersion
) -> Response:
    _require_accepting(service, _resolve_model(service, model_name, model_version))
    return Response(status_code=200)


def body_limit(service: ServiceState) -> int:
    """Largest accepted infer body: `max_images_per_request` images, each either an encoded file at
    its limit or a 3xSxS tensor written as JSON, plus room for the header."""
    assert service.metadata is not None
    settings = service.settings
    elements = 3 * service.metadata.image_size**2
    per_image = max(settings.max_image_bytes + 4, elements * JSON_BYTES_PER_ELEMENT)
    return settings.max_images_per_request * per_image + HEADER_ALLOWANCE


async def _read_body(request: Request, limit: int) -> bytes:
    """The (decompressed) body, refused past `limit` bytes before or while it is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request is {declared} bytes; the limit is {limit}")
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    elif encoding == "identity":
        inflater = None
    else:
        raise UnsupportedFeatureError(f"unsupported Content-Encoding '{encoding}': use gzip, deflate or none")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(inflater.decompress(chunk, limit + 1 - len(body)) if inflater else chunk)
            if len(body) > limit:
                raise PayloadTooLargeError(f"the request is larger than {limit} bytes")
        if inflater is not None:
            body.extend(inflater.flush())
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} request body could not be decompressed: {exc}") from None
    if len(body) > limit:
        raise PayloadTooLargeError(f"the request is larger than {limit} bytes")
    return bytes(body)


def _batch_size(item: RequestInput, model: str, limit: int) -> int:
    count = item.shape[0] if item.shape else 0
    if count < 1:
        raise ProtocolError(f"input '{item.name}' of model '{model}' needs a batch of at least 1")
    if count > limit:
        raise TooManyImagesError(
            f"input '{item.name}' has a batch of {count}; at most {limit} images per request "
            "(TRANSXNET_MAX_IMAGES_PER_REQUEST): split it"
        )
    return count


async def _images(service: ServiceState, model: str, infer: InferRequest) -> list[np.ndarray]:
    """The request's images as preprocessed `[3, S, S]` float32 arrays, checked against the model."""
    assert service.metadata is not None
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
    item = infer.inputs[0]
    limit = service.settings.max_images_per_request
    if item.name == INPUT_NAME:
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
        _batch_size(item, model, limit)
        batch = decode_numeric(item)
        return list(batch)
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
    _batch_size(item, model, limit)
    blobs = decode_bytes(item)
    for index, blob in enumerate(blobs):
        if len(blob) > service.settings.max_image_bytes:
            raise PayloadTooLargeError(
                f"image {index} of input '{IMAGE_BYTES_INPUT}' is {len(blob)} bytes; the limit is "
                f"{service.settings.max_image_bytes} (TRANSXNET_MAX_IMAGE_BYTES)"
            )
    return await service.preprocess(blobs)


def _requested_outputs(infer: InferRequest, model: str) -> list[RequestedOutput]:
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
    return infer.outputs


async def _infer(request: Request, service: ServiceState, model_name: str, version: str) -> Response:
    model = _resolve_model(service, model_name, version)
    _require_accepting(service, model)
    assert service.batcher is not None and service.metadata is not None
    body = await _read_body(request, body_limit(service))
    infer = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
    requested = _requested_outputs(infer, model)
    images = await _images(service, model, infer)
    results = await service.infer(request, images, [output.name for output in requested])

    outputs = []
    for output in requested:
        values = np.stack([result[output.name] for result in results])
        binary = infer.binary_data_output if output.binary is None else output.binary
        if output.classification:
            labels = service.metadata.labels if output.name == "logits" else None
            strings = classification_strings(values, output.classification, labels)
            outputs.append(ResponseOutput(output.name, BYTES, strings, binary))
        else:
            outputs.append(ResponseOutput(output.name, "FP32", values.astype(np.float32, copy=False), binary))
    content, header_length = encode_infer_response(
        model_name=model, model_version=MODEL_VERSION, request_id=infer.id, outputs=outputs
    )
    if header_length is None:
        return Response(content=content, media_type="application/json")
    return Response(
        content=content,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(header_length)},
    )


_INFER_DOC = (
    "A JSON inference request, optionally followed by binary tensor data (header "
    f"`{HEADER_LENGTH}`). Inputs: `{INPUT_NAME}` FP32 [N,3,S,S] or `{IMAGE_BYTES_INPUT}` BYTES [N] / [N,1]."
)


@router.post("/models/{model_name}/infer", summary="Inference", description=_INFER_DOC)
async def infer(request: Request, service: Service, model_name: ModelName) -> Response:
    return await _infer(request, service, model_name, "")


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    summary="Inference (versioned)",
    description=_INFER_DOC,
)
async def infer_version(
    request: Request, service: Service, model_name: ModelName, model_version: ModelVersion
) -> Response:
    return await _infer(request, service, model_name, model_version)
