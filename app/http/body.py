"""The one HTTP body reader: every route reads its body here, within one limit, charged to the
request's share of the memory budget.

- A `Content-Length` must be an exact decimal integer; one over the limit is refused before a byte is
  read. A chunked body is cut off as soon as it passes the limit.
- `Content-Encoding: gzip` or `deflate` is inflated as it arrives and the limit applies to what comes
  out, so a small compressed body cannot inflate past it; the stream must end exactly at its trailer
  (a truncated stream or junk after it is refused).
- A client that disconnects mid-upload is `ClientDisconnectedError` (499), not a server error.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from starlette.requests import ClientDisconnect

from app.errors import (
    ClientDisconnectedError,
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedFeatureError,
)
from app.pipeline import Job

_DECIMAL = re.compile(r"[0-9]{1,19}")


def declared_length(request: Request) -> int | None:
    """The request's Content-Length, exactly as RFC 9110 writes it (digits only), or None."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value):
        raise MalformedRequestError(f"Content-Length {value!r} is not a decimal number of bytes")
    return int(value)


def _inflater(request: Request) -> zlib._Decompress | None:
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding == "identity":
        return None
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise UnsupportedFeatureError(f"unsupported Content-Encoding '{encoding}': use gzip, deflate or none")


def _too_large(what: str, size: int | str, limit: int, hint: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"{what} is {size} bytes; the limit is {limit}{hint}")


async def stream_body(
    request: Request, job: Job, limit: int, *, what: str, hint: str = ""
) -> AsyncIterator[bytes]:
    """The body's (decoded) chunks, at most `limit` bytes in all, each charged to `job`."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(what, declared, limit, hint)
    inflater = _inflater(request)
    total = 0
    try:
        async for raw in request.stream():
            chunk = raw
            if inflater is not None:
                chunk = _inflate(inflater, raw, limit - total)
                if inflater.unconsumed_tail:
                    raise _too_large(what, f"more than {limit}", limit, hint)
            total += len(chunk)
            if total > limit:
                raise _too_large(what, f"more than {limit}", limit, hint)
            job.reserve(len(chunk))
            yield chunk
        if inflater is not None and (tail := inflater.flush()):
            total += len(tail)
            if total > limit:
                raise _too_large(what, f"more than {limit}", limit, hint)
            job.reserve(len(tail))
            yield tail
    except ClientDisconnect:
        raise ClientDisconnectedError("the client disconnected while sending the request body") from None
    if inflater is not None and not (inflater.eof and not inflater.unused_data):
        problem = "is truncated (no end of stream)" if not inflater.eof else "has data after its end"
        raise MalformedRequestError(f"the compressed request body {problem}")


def _inflate(inflater: zlib._Decompress, data: bytes, room: int) -> bytes:
    """At most `room + 1` inflated bytes of `data` (one past the room tells the caller it overflowed)."""
    try:
        return inflater.decompress(data, max(room, 0) + 1)
    except zlib.error as exc:
        raise MalformedRequestError(f"the compressed request body could not be decompressed: {exc}") from None


async def read_body(request: Request, job: Job, limit: int, *, what: str, hint: str = "") -> bytes:
    """The whole (decoded) body, within `limit`, charged to `job`."""
    body = bytearray()
    async for chunk in stream_body(request, job, limit, what=what, hint=hint):
        body.extend(chunk)
    return bytes(body)


def disconnect_watch(request: Request) -> Callable[[], Awaitable[None]]:
    """What the pipeline awaits to learn that the client has gone, once the body has been read.

    uvicorn does not cancel a handler whose client went away, so the pipeline's cancellation (which
    drops queued decodes and images) needs this watch on the ASGI channel. Only valid after the body
    is consumed: before that, `receive()` would take body chunks.
    """

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return disconnected
