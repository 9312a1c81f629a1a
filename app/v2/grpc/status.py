"""The error taxonomy (`app.errors`) as gRPC status codes: one table, as `app.http.errors` is for HTTP.

Chosen as Triton's gRPC server answers, and as gRPC's own semantics say: INVALID_ARGUMENT for a
request that is wrong as sent (datatype, shape, parameters, undecodable image); RESOURCE_EXHAUSTED for
one past a size limit (grpc itself answers so for a message over the receive limit); NOT_FOUND for an
unknown model or version; UNAVAILABLE for what a retry (here or on another replica) can cure: queue
full, memory budget full, warming up, draining; DEADLINE_EXCEEDED when the request waited past its
timeout; CANCELLED when the client went; UNIMPLEMENTED for protocol features this server lacks.
"""

from __future__ import annotations

import math

import grpc

from app.errors import ServiceError

#: gRPC status of every error code of `app.errors`.
STATUS: dict[str, grpc.StatusCode] = {
    "invalid_image": grpc.StatusCode.INVALID_ARGUMENT,
    "malformed_request": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_parameter": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_media_type": grpc.StatusCode.INVALID_ARGUMENT,
    "payload_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too_many_images": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "unsupported": grpc.StatusCode.UNIMPLEMENTED,
    "queue_full": grpc.StatusCode.UNAVAILABLE,
    "overloaded": grpc.StatusCode.UNAVAILABLE,
    "not_ready": grpc.StatusCode.UNAVAILABLE,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "body_timeout": grpc.StatusCode.DEADLINE_EXCEEDED,  # the message did not arrive in time
    "client_closed_request": grpc.StatusCode.CANCELLED,
    "startup_failed": grpc.StatusCode.INTERNAL,
    "inference_failed": grpc.StatusCode.INTERNAL,
    "internal_error": grpc.StatusCode.INTERNAL,
}


def status_of(error: ServiceError) -> grpc.StatusCode:
    return STATUS.get(error.code, grpc.StatusCode.INTERNAL)


def retry_metadata(error: ServiceError) -> tuple[tuple[str, str], ...]:
    """`retry-after` (seconds, as HTTP's header) in the trailers of an error that invites a retry."""
    if error.retry_after_s is None:
        return ()
    return (("retry-after", str(max(1, math.ceil(error.retry_after_s)))),)
