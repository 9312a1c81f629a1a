"""The gRPC server beside uvicorn, in the same process and event loop: grpcio's asyncio server with
the inference and health services over one built `Service`.

Its lifecycle follows the HTTP server's (`app.main`'s lifespan): started with the service, so probes
see NOT_SERVING while the model warms up; on SIGTERM readiness turns to draining at once (new
inference RPCs get UNAVAILABLE, health NOT_SERVING) while in-flight RPCs go on; at shutdown the server
stops taking calls and waits what is left of the shutdown timeout for those in flight.
"""

from __future__ import annotations

import logging
import time

import grpc

from app.service import Service
from app.v2.grpc.health import HealthServicer
from app.v2.grpc.proto import health_pb2_grpc
from app.v2.grpc.servicer import InferenceServicer, add_inference_service

logger = logging.getLogger(__name__)


def server_options(service: Service) -> list[tuple[str, int]]:
    """Messages up to the request limit of every transport (grpc answers RESOURCE_EXHAUSTED beyond it
    before the message is read whole), responses of any size, and a port of our own."""
    return [
        ("grpc.max_receive_message_length", service.pipeline.limits.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        # grpc shares a port with another process by default (SO_REUSEPORT): a second server on the
        # same port would silently take half the calls. Fail to start instead, as uvicorn does.
        ("grpc.so_reuseport", 0),
    ]


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """Start in the running event loop; `port` is the bound one (useful when asked for port 0)."""

    def __init__(self, service: Service, *, version: str) -> None:
        self.service = service
        self.version = version
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind and start; `RuntimeError` naming the address when the port cannot be bound."""
        server = grpc.aio.server(options=server_options(self.service))
        add_inference_service(InferenceServicer(self.service, version=self.version), server)
        health_pb2_grpc.add_HealthServicer_to_server(
            HealthServicer(self.service.readiness, self.service.metrics), server
        )
        where = address(host, port)
        try:
            self.port = server.add_insecure_port(where)
        except RuntimeError as exc:
            raise RuntimeError(
                f"cannot listen for gRPC on {where} (TRANSXNET_GRPC_PORT): is the port in use? {exc}"
            ) from None
        await server.start()
        self._server = server
        logger.info("gRPC (Open Inference Protocol, health) on %s", address(host, self.port))

    def remaining_s(self) -> float:
        """What is left of the shutdown timeout since SIGTERM (all of it if the service was not
        drained by a signal): the grace period, then `shutdown_timeout_s` for everything in flight."""
        settings = self.service.settings
        since = self.service.readiness.draining_since
        if since is None:
            return settings.shutdown_timeout_s
        deadline = since + settings.shutdown_grace_s + settings.shutdown_timeout_s
        return max(0.0, deadline - time.monotonic())

    async def stop(self) -> None:
        """Refuse new calls and wait for those in flight, up to what is left of the timeout."""
        if self._server is None:
            return
        grace = self.remaining_s()
        logger.info("gRPC: stopping, in-flight calls have %.1f s", grace)
        await self._server.stop(grace)
        self._server = None
