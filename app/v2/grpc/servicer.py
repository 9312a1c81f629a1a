"""`inference.GRPCInferenceService`: each method translates its message in, calls the model
semantics that /v2 over HTTP calls (`app.v2.model`) and the same pipeline, and translates the result
out. Errors become status codes through one table (`app.v2.grpc.status`).

Every RPC is counted in the service's metrics with `transport="grpc"`, the method name as `route` and
the status code's name as `status`, and carries a request ID in its logs (the client's `x-request-id`
metadata, else the inference request's `id`, else a new one), sent back in the trailers.

Cancellation is gRPC's: when the client cancels or its deadline passes, grpc.aio cancels the handler,
and the pipeline drops the request's queued decodes and images as it does for an HTTP disconnect.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from app.errors import ModelNotFoundError, ServiceError
from app.logging_setup import current_request_id, valid_request_id
from app.pipeline import off_loop
from app.service import Service
from app.v2 import model as v2
from app.v2.grpc import status, wire
from app.v2.grpc.proto import grpc_service_pb2 as pb
from app.v2.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from app.v2.grpc.proto import model_config_pb2
from app.v2.protocol import EXTENSIONS

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
Context = grpc.aio.ServicerContext
Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[[Any, Request, Context], Awaitable[Response]]


def _client_request_id(context: Context, fallback: str | None = None) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return valid_request_id(value)
    return valid_request_id(fallback)


def _cancelled_status(context: Context) -> grpc.StatusCode:
    """Why grpc.aio cancelled the handler: the deadline passed, or the client cancelled."""
    remaining = context.time_remaining()
    return (
        grpc.StatusCode.DEADLINE_EXCEEDED
        if remaining is not None and remaining <= 0
        else grpc.StatusCode.CANCELLED
    )


def rpc(method: Method) -> Method:
    """Count, time and log `method` under its name; map its `ServiceError`s to status codes."""
    name = method.__name__

    @functools.wraps(method)
    async def handle(self: InferenceServicer, request: Any, context: Context) -> Any:
        return await self.observe(name, method(self, request, context), request, context)

    return handle


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's methods over one built `Service`; `version` is the server's (ServerMetadata)."""

    def __init__(self, service: Service, *, version: str) -> None:
        self.service = service
        self.version = version

    async def observe(self, name: str, work: Awaitable[Any], request: Any, context: Context) -> Any:
        metrics = self.service.metrics
        request_id = _client_request_id(context, getattr(request, "id", None) or None)
        token = current_request_id.set(request_id)
        trailers = ((REQUEST_ID_KEY, request_id),)
        code = grpc.StatusCode.OK
        started = time.perf_counter()
        metrics.in_progress.inc()
        try:
            context.set_trailing_metadata(trailers)
            return await work
        except ServiceError as error:
            code = status.status_of(error)
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
                logger.info("gRPC %s -> %s %s", name, code.name, error.code)
            await context.abort(
                code, error.message, trailing_metadata=trailers + status.retry_metadata(error)
            )
        except asyncio.CancelledError:
            code = _cancelled_status(context)
            logger.info("gRPC %s: %s by the client; its work was dropped", name, code.name)
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            logger.exception("unhandled error in gRPC %s", name)
            message = f"an internal error occurred; it has been logged with request id {request_id}"
            await context.abort(code, message, trailing_metadata=trailers)
        finally:
            metrics.in_progress.dec()
            current_request_id.reset(token)
            metrics.record_request("grpc", name, code.name, time.perf_counter() - started)

    @rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.readiness.live)

    @rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.readiness.accepting)

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        # As Triton: an unknown model or version is not ready (no error).
        try:
            v2.resolve_model(self.service, request.name, request.version)
        except ModelNotFoundError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.service.readiness.accepting)

    @rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=v2.SERVER_NAME, version=self.version, extensions=EXTENSIONS)

    @rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        model = v2.resolve_model(self.service, request.name, request.version)
        return json_format.ParseDict(v2.model_metadata(self.service, model), pb.ModelMetadataResponse())

    @rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        model = v2.resolve_model(self.service, request.name, request.version)
        config = json_format.ParseDict(v2.model_config(self.service, model), model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    @rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        # No name: every model, as Triton answers.
        model = v2.resolve_model(self.service, request.name, request.version) if request.name else None
        return json_format.ParseDict(v2.model_statistics(self.service, model), pb.ModelStatisticsResponse())

    @rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        service = self.service
        model = v2.resolve_model(service, request.model_name, request.model_version)
        async with service.pipeline.job() as job:
            # The message is in memory already (grpc read it within the receive limit): charge it.
            size = wire.message_bytes(request)
            job.reserve(size)
            # Typed contents are millions of numbers to convert: never on the event loop.
            infer = await off_loop(size, wire.infer_request, request)
            outputs = await v2.infer(service, job, model, infer, binary_default=True)
            return wire.infer_response(model, infer.id, outputs)
