"""Liveness, readiness and model metadata."""

from __future__ import annotations

from fastapi import APIRouter

from app.http.deps import ServiceDep
from app.http.openapi import INFERENCE_ERRORS
from app.http.schemas import HealthResponse, Limits, ModelInfo, ReadyResponse
from runtime.metadata import INPUT_NAME

router = APIRouter(tags=["health"])


@router.get(
    "/healthz", summary="Liveness", response_model=HealthResponse, responses={500: INFERENCE_ERRORS[500]}
)
async def healthz(service: ServiceDep) -> HealthResponse:
    """200 while the process can serve or is getting there; 500 if start-up failed for good."""
    service.readiness.check_live()
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=ReadyResponse,
    responses={503: INFERENCE_ERRORS[503]},
    description="200 once the model is loaded and warmed up at the max batch size; 503 before that and "
    "from the moment SIGTERM arrives.",
)
async def readyz(service: ServiceDep) -> ReadyResponse:
    service.readiness.check_accepting()
    return ReadyResponse(
        status="ready",
        model=service.metadata.variant,
        image_size=service.metadata.image_size,
        weights=service.metadata.weights,
        providers=list(service.loaded.providers),
        requested_providers=service.loaded.requested,
        fallbacks=list(service.loaded.fallbacks),
    )


@router.get(
    "/v1/models",
    summary="Model metadata",
    response_model=ModelInfo,
    description="What the served model expects and returns, the providers it runs on and the limits.",
)
async def models(service: ServiceDep) -> ModelInfo:
    meta, settings, preprocessor = service.metadata, service.settings, service.preprocessor
    return ModelInfo(
        model=meta.variant,
        image_size=meta.image_size,
        resize_size=meta.resize_size,
        crop_pct=meta.crop_pct,
        interpolation=meta.interpolation,
        pixel_exact=preprocessor.pixel_exact,
        jpeg_reducing_gap=preprocessor.jpeg_reducing_gap,
        mean=list(meta.mean),
        std=list(meta.std),
        num_classes=meta.num_classes,
        embed_dim=meta.embed_dim,
        weights=meta.weights,
        pretrained=meta.pretrained,
        precision=meta.precision,
        input={"name": INPUT_NAME, "shape": ["N", 3, meta.image_size, meta.image_size]},
        outputs=service.output_shapes,
        providers=list(service.loaded.providers),
        model_instances=settings.model_instances,
        intra_op_threads=settings.resolved_intra_op_threads,
        lone_batch_intra_op_threads=service.lone_batch_threads,
        limits=Limits(
            max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            batch_wait=settings.batch_wait,
            max_queue_size=settings.max_queue_size,
            max_images_per_request=settings.max_images_per_request,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_inflight_bytes=settings.max_inflight_bytes,
            request_timeout_s=settings.request_timeout_s,
        ),
    )
