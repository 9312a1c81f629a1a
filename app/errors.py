"""The service's one error taxonomy. Each error carries a stable machine-readable `code` and a message
that tells the caller what to do; nothing here knows a transport. Each transport maps the codes to its
wire form in one table: HTTP statuses and our JSON body (`app.http.errors`), Triton's statuses and
`{"error"}` under /v2, gRPC status codes (`app.v2.grpc`).
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `code` and `message` are what the client sees; `retry_after_s` invites a retry."""

    code: str = "internal_error"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class ImageDecodeError(ServiceError):
    """Bytes that are not a decodable image: empty, truncated, corrupt or random."""

    code = "invalid_image"


class MalformedRequestError(ServiceError):
    """A request whose framing is broken or holds no image: bad multipart, no `file`/`files` part,
    a Content-Length or compressed body that does not add up."""

    code = "malformed_request"


class UnsupportedMediaTypeError(ServiceError):
    """A content type (of the body or of a part) or an image format that we do not decode."""

    code = "unsupported_media_type"


class PayloadTooLargeError(ServiceError):
    """More bytes or more pixels than the configured limits (checked before a full decode)."""

    code = "payload_too_large"


class TooManyImagesError(ServiceError):
    """More images in one request than `max_images_per_request`."""

    code = "too_many_images"


class InvalidParameterError(ServiceError):
    """A parameter out of range (`top_k`, `outputs`, `format`, a classification count)."""

    code = "invalid_parameter"


class ProtocolError(ServiceError):
    """An inference request the Open Inference Protocol cannot accept: bad framing, JSON, names,
    datatypes or shapes."""

    code = "invalid_argument"


class ModelNotFoundError(ServiceError):
    """An unknown model name or version."""

    code = "not_found"


class UnsupportedFeatureError(ServiceError):
    """A protocol feature this server does not implement, e.g. shared memory."""

    code = "unsupported"


class QueueFullError(ServiceError):
    """The batcher's bounded queue has no room: retry later."""

    code = "queue_full"


class OverloadedError(ServiceError):
    """The request bytes held in memory across all requests would pass the budget: retry later."""

    code = "overloaded"


class NotReadyError(ServiceError):
    """The model is not warmed up yet, or the service is shutting down."""

    code = "not_ready"


class StartupFailedError(ServiceError):
    """Warm-up failed: the process is alive but will never serve; a liveness probe should restart it."""

    code = "startup_failed"


class RequestTimeoutError(ServiceError):
    """The request waited past its deadline (`request_timeout_s`, or the client's own); it was not
    computed."""

    code = "timeout"


class BodyTimeoutError(ServiceError):
    """The client paused longer than `body_timeout_s` while sending the request body."""

    code = "body_timeout"


class ClientDisconnectedError(ServiceError):
    """The client went away (mid-upload, or before its images ran); its work was dropped. Nobody reads
    the response: the outcome exists for logs and metrics (nginx's 499)."""

    code = "client_closed_request"


class InferenceError(ServiceError):
    """ONNX Runtime failed on the batch holding this request (logged once with its traceback)."""

    code = "inference_failed"
