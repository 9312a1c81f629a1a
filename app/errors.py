"""The service's errors: each carries its HTTP status, a stable machine-readable `code` and a message
that tells the caller what to do. They are mapped to a JSON body in one place (`app.main`), so the
rest of the code raises domain errors and never thinks about HTTP.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `status_code`, `code` and `message` become the JSON error body."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class ImageDecodeError(ServiceError):
    """Bytes that are not a decodable image: empty, truncated, corrupt or random."""

    status_code = 400
    code = "invalid_image"


class MalformedRequestError(ServiceError):
    """A request whose framing is broken or holds no image: bad multipart, no `file`/`files` part."""

    status_code = 400
    code = "malformed_request"


class UnsupportedMediaTypeError(ServiceError):
    """A content type (of the body or of a part) that is not an accepted image type or multipart."""

    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLargeError(ServiceError):
    """More bytes or more pixels than the configured limits (checked before a full decode)."""

    status_code = 413
    code = "payload_too_large"


class TooManyImagesError(ServiceError):
    """More images in one request than `max_images_per_request`."""

    status_code = 413
    code = "too_many_images"


class InvalidParameterError(ServiceError):
    """A query/form parameter out of range (`top_k`, `outputs`, `format`)."""

    status_code = 422
    code = "invalid_parameter"


class QueueFullError(ServiceError):
    """The batcher's bounded queue has no room: retry later (sent with `Retry-After`)."""

    status_code = 503
    code = "queue_full"


class NotReadyError(ServiceError):
    """The model is not loaded/warmed up yet, or the service is shutting down."""

    status_code = 503
    code = "not_ready"


class RequestTimeoutError(ServiceError):
    """The request waited in the queue past `request_timeout_s`; it was not computed."""

    status_code = 504
    code = "timeout"


class ClientDisconnectedError(ServiceError):
    """The client went away before its images ran; they were dropped from the queue, not computed.
    Nobody reads the response: the status (nginx's 499) exists for logs and metrics."""

    status_code = 499
    code = "client_closed_request"


class InferenceError(ServiceError):
    """ONNX Runtime failed on the batch holding this request (logged once with its traceback)."""

    status_code = 500
    code = "inference_failed"
