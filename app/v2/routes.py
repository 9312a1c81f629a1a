"""The Open Inference Protocol (KServe v2) over HTTP, so Triton's clients (`tritonclient`, perf tools)
talk to this service unmodified: health, server and model metadata, and `infer` (JSON, or JSON
followed by binary tensor data). The model semantics are `app.v2.model`'s, shared with gRPC."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from app.errors import PayloadTooLargeError
from app.http.body import disconnect_watch, read_body
from app.http.deps import ServiceDep
from app.pipeline import Limits, off_loop
from app.service import Service
from app.v2 import model as v2
from app.v2.protocol import (
    EXTENSIONS,
    HEADER_LENGTH,
    check_json_size,
    encode_infer_response,
)
from runtime.metadata import INPUT_NAME

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

#: Bytes a parsed JSON value costs at most in practice: a float object, its list slot, the list's
#: over-allocation (measured: 2.6x the text for printed floats, up to 22x for one-digit ints).
JSON_VALUE_BYTES = 40
#: Values a request's JSON may hold besides tensor data (names, shapes, parameters).
JSON_SPARE_VALUES = 4096

ModelName = Annotated[str, Path(description="The model's variant (e.g. transxnet_t) or ONNX file stem.")]
ModelVersion = Annotated[str, Path(description='The model version; only "1" exists.')]


def json_parse_cost(body: bytes, header_length: str | None, limits: Limits) -> int:
    """Memory the JSON header costs once parsed, bounded by what a request may legitimately carry.

    Parsed JSON takes 3 to 20 times its text (a Python float and a list slot per value), so its size
    alone does not bound memory; its number of values does. Values are separated by commas, so
    counting commas (C speed) bounds them from above before anything is parsed: more than every image
    of a full request as JSON floats is refused outright.
    """
    end = len(body)
    if header_length is not None and header_length.isdigit():
        end = min(end, int(header_length))
    values = body.count(b",", 0, end) + 1
    allowed = limits.max_images_per_request * limits.image_elements + JSON_SPARE_VALUES
    if values > allowed:
        raise PayloadTooLargeError(
            f"the JSON request holds up to {values} values, more than {allowed}: "
            f"{limits.max_images_per_request} images of {limits.image_elements} values each "
            "(TRANSXNET_MAX_IMAGES_PER_REQUEST); send tensors as binary data"
        )
    return values * JSON_VALUE_BYTES


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": v2.SERVER_NAME, "version": request.app.version, "extensions": list(EXTENSIONS)}


@router.get("/health/live", summary="Liveness (200 unless start-up failed for good)")
async def live(service: ServiceDep) -> Response:
    service.readiness.check_live()
    return Response(status_code=200)


@router.get("/health/ready", summary="Readiness (503 while warming up or draining)")
async def ready(service: ServiceDep) -> Response:
    service.readiness.check_accepting()
    return Response(status_code=200)


# Before /models/{model_name}, which would take "stats" for a model name.
@router.get("/models/stats", summary="Statistics of every model (Triton's)")
async def all_statistics(service: ServiceDep) -> dict[str, Any]:
    return v2.model_statistics(service)


@router.get("/models/{model_name}", summary="Model metadata")
async def model_metadata(service: ServiceDep, model_name: ModelName) -> dict[str, Any]:
    return v2.model_metadata(service, v2.resolve_model(service, model_name))


@router.get("/models/{model_name}/versions/{model_version}", summary="Model metadata (versioned)")
async def model_version_metadata(
    service: ServiceDep, model_name: ModelName, model_version: ModelVersion
) -> dict[str, Any]:
    return v2.model_metadata(service, v2.resolve_model(service, model_name, model_version))


@router.get("/models/{model_name}/ready", summary="Model readiness")
async def model_ready(service: ServiceDep, model_name: ModelName) -> Response:
    v2.resolve_model(service, model_name)
    service.readiness.check_accepting()
    return Response(status_code=200)


@router.get("/models/{model_name}/versions/{model_version}/ready", summary="Model readiness (versioned)")
async def model_version_ready(
    service: ServiceDep, model_name: ModelName, model_version: ModelVersion
) -> Response:
    v2.resolve_model(service, model_name, model_version)
    service.readiness.check_accepting()
    return Response(status_code=200)


@router.get("/models/{model_name}/config", summary="Model configuration (Triton's)")
async def model_config(service: ServiceDep, model_name: ModelName) -> dict[str, Any]:
    return v2.model_config(service, v2.resolve_model(service, model_name))


@router.get("/models/{model_name}/versions/{model_version}/config", summary="Model configuration (versioned)")
async def model_version_config(
    service: ServiceDep, model_name: ModelName, model_version: ModelVersion
) -> dict[str, Any]:
    return v2.model_config(service, v2.resolve_model(service, model_name, model_version))


@router.get("/models/{model_name}/stats", summary="Model statistics (Triton's)")
async def model_statistics(service: ServiceDep, model_name: ModelName) -> dict[str, Any]:
    return v2.model_statistics(service, v2.resolve_model(service, model_name))


@router.get("/models/{model_name}/versions/{model_version}/stats", summary="Model statistics (versioned)")
async def model_version_statistics(
    service: ServiceDep, model_name: ModelName, model_version: ModelVersion
) -> dict[str, Any]:
    return v2.model_statistics(service, v2.resolve_model(service, model_name, model_version))


async def _infer(request: Request, service: Service, model_name: str, version: str) -> Response:
    model = v2.resolve_model(service, model_name, version)
    async with service.pipeline.job() as job:
        body = await read_body(request, job, job.limits.max_request_bytes, what="the request")
        header_length = request.headers.get(HEADER_LENGTH)
        job.reserve(json_parse_cost(body, header_length, job.limits))
        if header_length is not None:
            job.reserve(len(body))  # the JSON header and the binary buffers are copied out of it
        infer = await request.app.state.json_parser.parse(body, header_length)
        outputs = await v2.infer(service, job, model, infer, client_gone=disconnect_watch(request))
        json_values = check_json_size(outputs)
        content, header_length = await off_loop(
            json_values * 8,
            partial(encode_infer_response, model_name=model, model_version=v2.MODEL_VERSION),
            infer.id,
            outputs,
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
    f"`{HEADER_LENGTH}`). Inputs: `{INPUT_NAME}` FP32 [N,3,S,S] or `{v2.IMAGE_BYTES_INPUT}` BYTES [N] / "
    "[N,1]."
)


@router.post("/models/{model_name}/infer", summary="Inference", description=_INFER_DOC)
async def infer(request: Request, service: ServiceDep, model_name: ModelName) -> Response:
    return await _infer(request, service, model_name, "")


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    summary="Inference (versioned)",
    description=_INFER_DOC,
)
async def infer_version(
    request: Request, service: ServiceDep, model_name: ModelName, model_version: ModelVersion
) -> Response:
    return await _infer(request, service, model_name, model_version)
