"""The composition root: `create_app(settings)` builds the service and puts its transports on it
(HTTP here; the gRPC server beside it when `grpc_port` is set). The lifespan only starts and stops
what was built."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.http.app import create_http_app
from app.service import RunnerOverride, Service, build_service
from app.settings import Settings, load_settings

logger = logging.getLogger(__name__)

__all__ = ["RunnerOverride", "create_app"]


def create_app(
    settings: Settings | None = None, *, runner: RunnerOverride | None = None, split_resize: bool = True
) -> FastAPI:
    """Build the service and its HTTP app. `runner` replaces or wraps the ONNX runner (tests);
    `split_resize=False` is for the benchmarks' A/B runs."""
    service = build_service(settings or load_settings(), runner=runner, split_resize=split_resize)
    return create_http_app(service, lifespan=_lifespan(service))


def _lifespan(service: Service):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    return lifespan
