"""POST /classify and POST /features: the REST wire format around the pipeline (images in from
multipart or a raw body; top-k classes, or features as JSON or .npz, out)."""

from __future__ import annotations

import string
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response

from app.errors import InvalidParameterError
from app.http.body import disconnect_watch
from app.http.deps import ServiceDep
from app.http.openapi import IMAGE_REQUEST_BODY, INFERENCE_ERRORS
from app.http.schemas import ClassifyResponse, FeaturesResponse
from app.http.uploads import read_images
from app.pipeline import off_loop
from app.postprocess import classify_payload, dumps, features_npz, features_payload
from app.v2.protocol import MAX_JSON_VALUES
from runtime.metadata import STAGE_OUTPUTS, ModelMetadata

router = APIRouter(tags=["inference"])

FEATURE_OUTPUTS = ("pooled", *STAGE_OUTPUTS)
NPZ_MEDIA_TYPE = "application/x-npz"
DEFAULT_TOP_K = 5


#: Printable ASCII except '%' passes through a header value as is; everything else is escaped.
_HEADER_SAFE = string.ascii_letters + string.digits + string.punctuation.replace("%", "") + " "


def _header_value(value: str) -> str:
    """Percent-encode what HTTP/1.1 headers cannot carry (a checkpoint named in UTF-8, control
    characters): Starlette encodes headers as latin-1 and would fail every such response with 500."""
    return quote(value, safe=_HEADER_SAFE)


def _json(payload: dict) -> Response:
    return Response(content=dumps(payload), media_type="application/json")


def _features_json(results: list, metadata: ModelMetadata, names: list[str]) -> bytes:
    return dumps(features_payload(results, metadata, names))


@router.post(
    "/classify",
    summary="Classify one or more images",
    description="Top-k ImageNet classes per image, in request order. Images share inference batches "
    "with concurrent requests.",
    response_model=ClassifyResponse,
    responses=INFERENCE_ERRORS,
    openapi_extra=IMAGE_REQUEST_BODY,
)
async def classify(
    request: Request,
    service: ServiceDep,
    top_k: Annotated[
        int | None, Query(ge=1, description="Classes per image (1..num_classes, default 5).", examples=[5])
    ] = None,
) -> Response:
    metadata = service.metadata
    k = min(DEFAULT_TOP_K, metadata.num_classes) if top_k is None else top_k
    if k > metadata.num_classes:
        raise InvalidParameterError(f"top_k must be between 1 and {metadata.num_classes}, got {k}")
    async with service.pipeline.job() as job:
        blobs = await read_images(request, job)
        results = await job.run_encoded(blobs, ["logits"], client_gone=disconnect_watch(request))
        return _json(classify_payload(results, metadata, k))


def _parse_outputs(values: list[str] | None) -> list[str]:
    names: list[str] = []
    for value in values or ["pooled"]:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name not in FEATURE_OUTPUTS:
                raise InvalidParameterError(
                    f"unknown output {name!r}: choose from {', '.join(FEATURE_OUTPUTS)} "
                    "(repeat `outputs` or separate with commas)"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise InvalidParameterError(f"no output selected: choose from {', '.join(FEATURE_OUTPUTS)}")
    return names


@router.post(
    "/features",
    summary="Backbone features for one or more images",
    description="`pooled` embeddings and/or the stage feature maps, as JSON (flattened values with "
    f"shape) or as a compact `.npz` (`Accept: {NPZ_MEDIA_TYPE}` or `format=npz`) whose arrays are "
    "named after the outputs and stacked over the request's images.",
    response_model=FeaturesResponse,
    responses={
        **INFERENCE_ERRORS,
        200: {
            "description": "Features as JSON, or as .npz when asked for.",
            "content": {NPZ_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
    },
    openapi_extra=IMAGE_REQUEST_BODY,
)
async def features(
    request: Request,
    service: ServiceDep,
    outputs: Annotated[
        list[str] | None,
        Query(
            description=f"Outputs to return: {', '.join(FEATURE_OUTPUTS)} (repeatable or comma-separated; "
            "default pooled).",
            examples=[["pooled", "stage4"]],
        ),
    ] = None,
    format: Annotated[  # the public query parameter is named `format`
        Literal["json", "npz"] | None,
        Query(description=f"Response format; default json unless Accept asks for {NPZ_MEDIA_TYPE}."),
    ] = None,
) -> Response:
    metadata = service.metadata
    names = _parse_outputs(outputs)
    wants_npz = format == "npz" or (format is None and NPZ_MEDIA_TYPE in request.headers.get("accept", ""))
    async with service.pipeline.job() as job:
        blobs = await read_images(request, job)
        results = await job.run_encoded(blobs, names, client_gone=disconnect_watch(request))
        if wants_npz:
            size = sum(results[0][name].nbytes for name in names) * len(results)
            npz = await off_loop(size, features_npz, results, names)
            return Response(
                content=npz,
                media_type=NPZ_MEDIA_TYPE,
                headers={
                    "X-Model": _header_value(metadata.variant),
                    "X-Weights": _header_value(metadata.weights),
                },
            )
        values = sum(results[0][name].size for name in names) * len(results)
        if values > MAX_JSON_VALUES:
            raise InvalidParameterError(
                f"the requested features hold {values} values, more than the {MAX_JSON_VALUES} a JSON "
                f"response may carry: ask for .npz (format=npz or Accept: {NPZ_MEDIA_TYPE}), for fewer "
                "outputs, or for fewer images per request"
            )
        body = await off_loop(values * 8, _features_json, results, metadata, names)
        return Response(content=body, media_type="application/json")
