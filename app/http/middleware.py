"""The outermost ASGI layer: a request ID on every request, counts and latency by route and status,
and an unexpected exception turned into a 500 `internal_error` (traceback logged once, never sent)."""

from __future__ import annotations

import logging
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import error_body
from app.logging_setup import current_request_id, valid_request_id
from app.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()  # ASGI header names are lower-case bytes


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER_BYTES:
            return valid_request_id(value.decode("latin-1"))
    return valid_request_id(None)


class RequestObserver:
    """Gives every request an ID (X-Request-ID, echoed in the response and on every log line of the
    request), counts and times it by route template and status, and turns an unexpected exception
    into a 500 `internal_error`."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False
        request_id = request_id_of(scope)
        token = current_request_id.set(request_id)
        self.metrics.in_progress.inc()

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != _REQUEST_ID_HEADER_BYTES
                ]
                message = {**message, "headers": [*headers, (_REQUEST_ID_HEADER_BYTES, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            logger.exception(
                "unhandled error on %s %s",
                scope.get("method"),
                scope.get("path"),
                extra={"request_id": request_id},
            )
            status = 500
            if not response_started:
                text = f"an internal error occurred; it has been logged with request id {request_id}"
                response = JSONResponse(error_body("internal_error", text), status_code=500)
                await response(scope, receive, observed_send)
        finally:
            self.metrics.in_progress.dec()
            current_request_id.reset(token)
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.record_request("http", label, str(status), time.perf_counter() - started)
