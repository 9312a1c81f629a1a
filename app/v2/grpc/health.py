"""The standard gRPC health service (grpc.health.v1) over the service's readiness, so Kubernetes' gRPC
probes (and grpc_health_probe) see what /readyz says: SERVING only while the service accepts work;
NOT_SERVING while it warms up, after a failed start-up and from SIGTERM on.

Check reads readiness at the moment it is asked, so it is never stale. Watch sends the status, then
each change; once the service drains it sends NOT_SERVING and ends, so that open Watch streams never
hold a graceful shutdown for its whole timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from app.metrics import ServiceMetrics
from app.readiness import Readiness
from app.v2.grpc.proto import health_pb2 as pb
from app.v2.grpc.proto import health_pb2_grpc as pb_grpc

#: The names answered: the whole server, and the inference service.
SERVICES = ("", "inference.GRPCInferenceService")
Status = pb.HealthCheckResponse.ServingStatus


class HealthServicer(pb_grpc.HealthServicer):
    """Must be built in the event loop that serves it (readiness changes are handed to that loop)."""

    def __init__(self, readiness: Readiness, metrics: ServiceMetrics) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        readiness.add_listener(self._on_change)

    def _on_change(self) -> None:
        # May run in a signal handler: only schedule the wake-up.
        self._loop.call_soon_threadsafe(self._wake_watchers)

    def _wake_watchers(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _status(self) -> Status:
        return (
            pb.HealthCheckResponse.SERVING
            if self._readiness.accepting
            else pb.HealthCheckResponse.NOT_SERVING
        )

    async def Check(
        self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.HealthCheckResponse:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if request.service not in SERVICES:
                code = grpc.StatusCode.NOT_FOUND
                await context.abort(code, f"unknown service '{request.service}'; known: {list(SERVICES)}")
            return pb.HealthCheckResponse(status=self._status())
        finally:
            self._metrics.record_request("grpc", "Health/Check", code.name, time.perf_counter() - started)

    async def Watch(
        self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HealthCheckResponse]:
        if request.service not in SERVICES:
            # As the protocol says: SERVICE_UNKNOWN, and the call stays open (until shutdown).
            yield pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVICE_UNKNOWN)
            while True:
                changed = self._changed
                if self._readiness.draining:
                    return
                await changed.wait()
        last: Status | None = None
        while True:
            changed = self._changed  # taken before reading, so no change is missed in between
            current = self._status()
            if current != last:
                yield pb.HealthCheckResponse(status=current)
                last = current
            if self._readiness.draining:
                return
            await changed.wait()
