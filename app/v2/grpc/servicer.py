"""`inference.GRPCInferenceService`: each method translates its message in, calls the model
semantics that /v2 over HTTP calls (`app.v2.model`) and the same pipeline, and translates the result
out. Errors become status codes through one table (`app.v2.grpc.status`).

Every RPC is counted in the service's metrics with `transport="grpc"`, the method name as `route` and
the status code's name as `status`, and carries a request ID in its logs (the client's `x-request-id`
metadata, else the inference request's `id`, else a new one), sent back in the trailers.

Cancellation is gRPC's: when the client cancels or its deadline passes, grpc.aio cancels the handler,
and the pipeline drops the request's queued decodes and images as it does for an HTTP disconnect.

ModelInfer is registered as a stream-unary method over raw bytes (`add_inference_service`). On the
wire that is the same call (one message each way), but grpc.aio runs a streaming handler as soon as
the call starts, so the handler receives the message itself: within the body timeout, as HTTP bodies
are, and charged to the memory budget before it is parsed. A unary handler only runs once grpc has
the whole message, so an upload that stalls part-way would hold its bytes for as long as the client
keeps the call open (measured: 200 MiB per stalled call, never released).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from app.errors import BodyTimeoutError, ModelNotFoundError, ProtocolError, ServiceError
from app.logging_setup import current_request_id, valid_request_id
from app.pipeline import Job, off_loop
from app.service import Service
from app.v2 import model as v2
from app.v2.grpc import status, wire
from app.v2.grpc.proto import grpc_service_pb2 as pb
from app.v2.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from app.v2.grpc.proto import model_config_pb2
from app.v2.protocol import EXTENSIONS

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
SERVICE_NAME = "inference.GRPCInferenceService"
Context = grpc.aio.ServicerContext
Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[[Any, Request, Context], Awaitable[Response]]


def _metadata_request_id(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return value
    return None


def _trailers() -> tuple[tuple[str, str], ...]:
    return ((REQUEST_ID_KEY, current_request_id.get()),)


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
        return await self.observe(name, method(self, request, context), context)

    return handle


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's methods over one built `Service`; `version` is the server's (ServerMetadata)."""

    def __init__(self, service: Service, *, version: str) -> None:
        self.service = service
        self.version = version

    async def observe(self, name: str, work: Awaitable[Any], context: Context) -> Any:
        metrics = self.service.metrics
        # The request ID may still change while `work` runs (ModelInfer's message names one): the
        # trailers are written from the current one.
        token = current_request_id.set(valid_request_id(_metadata_request_id(context)))
        code = grpc.StatusCode.OK
        started = time.perf_counter()
        metrics.in_progress.inc()
        try:
            context.set_trailing_metadata(_trailers())
            return await work
        except ServiceError as error:
            code = status.status_of(error)
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
                logger.info("gRPC %s -> %s %s", name, code.name, error.code)
            await context.abort(
                code, error.message, trailing_metadata=_trailers() + status.retry_metadata(error)
            )
        except asyncio.CancelledError:
            code = _cancelled_status(context)
            logger.info("gRPC %s: %s by the client; its work was dropped", name, code.name)
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            logger.exception("unhandled error in gRPC %s", name)
            message = (
                f"an internal error occurred; it has been logged with request id {current_request_id.get()}"
            )
            await context.abort(code, message, trailing_metadata=_trailers())
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

    async def ModelInfer(self, requests: AsyncIterator[bytes], context: Context) -> pb.ModelInferResponse:
        """Stream-unary over raw bytes (see the module's docstring); `requests` is unused: the one
        message is read from `context` within the body timeout."""
        return await self.observe("ModelInfer", self._model_infer(context), context)

    async def _model_infer(self, context: Context) -> pb.ModelInferResponse:
        service = self.service
        async with service.pipeline.job() as job:
            request, received = await receive_infer_request(context, job)
            if request.id and _metadata_request_id(context) is None:
                current_request_id.set(valid_request_id(request.id))
                context.set_trailing_metadata(_trailers())
            model = v2.resolve_model(service, request.model_name, request.model_version)
            size = wire.message_bytes(request)
            # Typed contents can take more memory parsed than on the wire (varints): charge the rest.
            job.reserve(size - received)
            # Typed contents are millions of numbers to convert: never on the event loop.
            infer = await off_loop(size, wire.infer_request, request)
            outputs = await v2.infer(service, job, model, infer, binary_default=True)
            return wire.infer_response(model, infer.id, outputs)


async def receive_infer_request(context: Context, job: Job) -> tuple[pb.ModelInferRequest, int]:
    """The call's one message and its size on the wire, received within the body timeout and charged
    to the memory budget before it is parsed (the parsed message replaces the raw bytes, dropped)."""
    timeout = job.limits.body_timeout_s
    try:
        raw = await asyncio.wait_for(context.read(), timeout)
    except TimeoutError:
        raise BodyTimeoutError(
            f"the request message did not arrive within {timeout:g} s; over gRPC the whole message "
            "must arrive within TRANSXNET_BODY_TIMEOUT_S"
        ) from None
    if not isinstance(raw, bytes):  # grpc.aio.EOF: the client half-closed without a message
        raise ProtocolError("the call carried no ModelInferRequest message")
    job.reserve(len(raw))
    try:
        return pb.ModelInferRequest.FromString(raw), len(raw)
    except DecodeError:
        raise ProtocolError("the request message is not a valid ModelInferRequest") from None


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the inference service as the generated code does, but ModelInfer stream-unary over
    raw bytes. The generated handler table is taken from the generated code, not copied."""
    table: dict[str, grpc.RpcMethodHandler] = {}

    class _Capture:
        def add_generic_rpc_handlers(self, handlers: object) -> None:
            pass

        def add_registered_method_handlers(self, name: str, handlers: dict) -> None:
            table.update(handlers)

    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, _Capture())
    table["ModelInfer"] = grpc.stream_unary_rpc_method_handler(
        servicer.ModelInfer,
        request_deserializer=None,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, table),))
    server.add_registered_method_handlers(SERVICE_NAME, table)
