"""OpenAPI fragments shared by the inference routes: the request body (FastAPI cannot infer it,
because handlers read the body themselves to enforce limits while streaming) and error responses."""

from __future__ import annotations

from typing import Any

from app.http.schemas import ErrorResponse

_BINARY = {"type": "string", "format": "binary"}

IMAGE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Either multipart with `file` (one image) and/or `files` (several) parts, or "
        "one image as the raw body. Formats: JPEG, PNG, WebP, BMP, GIF, TIFF.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {**_BINARY, "description": "One image."},
                        "files": {"type": "array", "items": _BINARY, "description": "Several images."},
                    },
                },
                "encoding": {"file": {"contentType": "image/*"}, "files": {"contentType": "image/*"}},
            },
            **{
                media: {"schema": _BINARY}
                for media in ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
            },
        },
    }
}


def _error(description: str, code: str, message: str) -> dict[str, Any]:
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {"application/json": {"example": {"error": {"code": code, "message": message}}}},
    }


INFERENCE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error(
        "Not an image, corrupt or empty, or broken multipart.",
        "invalid_image",
        "the image could not be decoded",
    ),
    413: _error(
        "Too many bytes or pixels, or too many images.",
        "payload_too_large",
        "the image is larger than 20971520 bytes",
    ),
    415: _error(
        "Unsupported content type or image format.",
        "unsupported_media_type",
        "content type 'text/plain' is not accepted",
    ),
    422: _error("A parameter is out of range.", "invalid_parameter", "top_k must be between 1 and 1000"),
    500: _error(
        "Inference failed for this request's batch.",
        "inference_failed",
        "inference failed on this request's batch",
    ),
    503: _error(
        "Warming up, shutting down, or the queue is full (see Retry-After).",
        "queue_full",
        "the queue is full; retry after a short pause",
    ),
    504: _error(
        "Waited in the queue past request_timeout_s.",
        "timeout",
        "the request waited more than 30 s for the model",
    ),
}
