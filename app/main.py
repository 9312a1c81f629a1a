"""The composition root: `create_app(settings)` builds the service and puts its transports on it
(HTTP here; the gRPC server beside it when `grpc_port` is set). The lifespan only starts and stops
what was built."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from app.http.app import create_http_app
from app.service import RunnerOverride, Service, build_service
from app.settings import Settings, load_settings

if TYPE_CHECKING:
    from app.v2.grpc.server import GrpcServer

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
        grpc_server = None
        try:
            grpc_server = await _start_grpc(service, app.version)
            yield
        finally:
            # gRPC first: its in-flight calls still need the batcher that service.stop() ends.
            if grpc_server is not None:
                await grpc_server.stop()
            await service.stop()

    return lifespan


async def _start_grpc(service: Service, version: str) -> GrpcServer | None:
    """The gRPC server on `grpc_port`, or None when it is 0. Imported only then: its generated
    modules claim the `inference.*` protobuf names, which tritonclient.grpc claims too, and a
    process may hold only one of the two (see app/v2/grpc/__init__.py)."""
    settings = service.settings
    if not settings.grpc_port:
        return None
    from app.v2.grpc.server import GrpcServer

    server = GrpcServer(service, version=version)
    await server.start(settings.host, settings.grpc_port)
    return server
