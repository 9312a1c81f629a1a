"""The error taxonomy on HTTP: statuses, our JSON body, and under /v2 the Open Inference Protocol's
`{"error": "..."}` with Triton's statuses (tritonclient reads exactly that). Mapped here once, for
every route."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ServiceError

logger = logging.getLogger(__name__)

#: HTTP status of every error code.
STATUS: dict[str, int] = {
    "invalid_image": 400,
    "malformed_request": 400,
    "invalid_argument": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "too_many_images": 413,
    "body_timeout": 408,
    "unsupported_media_type": 415,
    "invalid_parameter": 422,
    "client_closed_request": 499,
    "internal_error": 500,
    "inference_failed": 500,
    "startup_failed": 500,
    "unsupported": 501,
    "queue_full": 503,
    "overloaded": 503,
    "not_ready": 503,
    "timeout": 504,
}


def status_of(error: ServiceError) -> int:
    return STATUS.get(error.code, 500)


def triton_status(status_code: int) -> int:
    """Triton's statuses for ours: 404, 405, 501 and 500 stay; unavailable, queue full and queue
    timeout are 503; every other client error (413, 415, 422, ...) is 400."""
    if status_code in (404, 405, 500, 501):
        return status_code
    if status_code in (503, 504):
        return 503
    if 400 <= status_code < 500:
        return 400
    return 500 if status_code > 500 else status_code


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _is_v2(request: Request) -> bool:
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    request: Request, code: str, message: str, status_code: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    if _is_v2(request):
        return JSONResponse({"error": message}, status_code=triton_status(status_code), headers=headers)
    return JSONResponse(error_body(code, message), status_code=status_code, headers=headers)


def retry_headers(error: ServiceError) -> dict[str, str] | None:
    if error.retry_after_s is None:
        return None
    return {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = status_of(exc)
    if status >= 500:
        logger.info("%s %s -> %d %s", request.method, request.url.path, status, exc.code)
    return error_response(request, exc.code, exc.message, status, retry_headers(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "body"))
        problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return error_response(request, "invalid_parameter", "; ".join(problems), 422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(request, code, str(exc.detail), exc.status_code, dict(exc.headers or {}))


def install(app: FastAPI) -> None:
    """Every error a route raises becomes the JSON error of its transport."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
