"""The one HTTP body reader: every route reads its body here, within one limit, charged to the
request's share of the memory budget.

- A `Content-Length` must be an exact decimal integer; one over the limit is refused before a byte is
  read. A chunked body is cut off as soon as it passes the limit.
- `Content-Encoding: gzip` or `deflate` is inflated as it arrives and the limit applies to what comes
  out, so a small compressed body cannot inflate past it; the stream must end exactly at its trailer
  (a truncated stream or junk after it is refused).
- A client that disconnects mid-upload is `ClientDisconnectedError` (499), not a server error; one
  that pauses longer than `body_timeout_s` between chunks gets 408.
- Only chunked transfer framing is accepted; compression belongs in Content-Encoding.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from fastapi import Request
from starlette.requests import ClientDisconnect

from app.errors import (
    BodyTimeoutError,
    ClientDisconnectedError,
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedFeatureError,
    UnsupportedMediaTypeError,
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


def _check_transfer_coding(request: Request) -> None:
    """Only chunked framing: any other transfer coding (`gzip, chunked`) would reach us still encoded
    while the server removed the chunking, and be read as if it were the body."""
    value = request.headers.get("transfer-encoding")
    if value is not None and value.strip().lower() != "chunked":
        raise UnsupportedFeatureError(
            f"Transfer-Encoding {value!r} is not supported: send the body plain or chunked, compressed "
            "with Content-Encoding if at all"
        )


async def _chunks(request: Request, timeout_s: float) -> AsyncIterator[bytes]:
    """The raw body chunks; `BodyTimeoutError` when the client pauses longer than `timeout_s`."""
    stream = request.stream().__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(stream.__anext__(), timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise BodyTimeoutError(
                f"the request body stalled for more than {timeout_s:g} s (TRANSXNET_BODY_TIMEOUT_S)"
            ) from None


def _inflater(request: Request) -> zlib._Decompress | None:
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding == "identity":
        return None
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    # RFC 9110: an unsupported content coding is 415, like an unsupported media type.
    raise UnsupportedMediaTypeError(f"unsupported Content-Encoding '{encoding}': use gzip, deflate or none")


def _too_large(what: str, size: int | str, limit: int, hint: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"{what} is {size} bytes; the limit is {limit}{hint}")


#: Largest piece inflated at once: the budget is charged before the next piece is made, so a
#: compressed chunk can never allocate far past what was admitted.
INFLATE_PIECE_BYTES = 1 << 20


async def stream_body(
    request: Request, job: Job, limit: int, *, what: str, hint: str = ""
) -> AsyncIterator[bytes]:
    """The body's (decoded) pieces, at most `limit` bytes in all, each charged to `job` as it is
    read."""
    _check_transfer_coding(request)
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(what, declared, limit, hint)
    inflater = _inflater(request)
    total = 0
    try:
        async for piece in _pieces(request, inflater, job.limits.body_timeout_s):
            total += len(piece)
            if total > limit:
                raise _too_large(what, f"more than {limit}", limit, hint)
            job.reserve(len(piece))
            yield piece
    except ClientDisconnect:
        raise ClientDisconnectedError("the client disconnected while sending the request body") from None
    if inflater is not None and not (inflater.eof and not inflater.unused_data):
        problem = "is truncated (no end of stream)" if not inflater.eof else "has data after its end"
        raise MalformedRequestError(f"the compressed request body {problem}")


async def _pieces(
    request: Request, inflater: zlib._Decompress | None, timeout_s: float
) -> AsyncIterator[bytes]:
    """The body as it arrives, inflated if it is compressed, then what the inflater still holds."""
    async for raw in _chunks(request, timeout_s):
        for piece in _decoded(inflater, raw):
            yield piece
            if inflater is not None:
                # One compressed chunk can inflate to a hundred pieces: let the loop run between.
                await asyncio.sleep(0)
    for piece in _decoded(inflater, b"", drain=True):
        yield piece


def _decoded(inflater: zlib._Decompress | None, raw: bytes, *, drain: bool = False) -> Iterator[bytes]:
    """`raw` as is, or inflated in pieces of at most `INFLATE_PIECE_BYTES`; `drain`: what the
    inflater still holds once the input has ended (never one unbounded flush)."""
    if inflater is None:
        if raw:
            yield raw
        return
    data = raw
    try:
        while data or drain:
            piece = inflater.decompress(data, INFLATE_PIECE_BYTES)
            data = inflater.unconsumed_tail
            if piece:
                yield piece
            elif drain:
                return
            elif data:  # no progress on input it keeps: a broken stream, not a slow one
                raise MalformedRequestError("the compressed request body could not be decompressed")
    except zlib.error as exc:
        raise MalformedRequestError(f"the compressed request body could not be decompressed: {exc}") from None


async def read_body(request: Request, job: Job, limit: int, *, what: str, hint: str = "") -> bytes:
    """The whole (decoded) body, within `limit`, charged to `job` (the joined copy too, while it and
    the pieces coexist)."""
    pieces = [piece async for piece in stream_body(request, job, limit, what=what, hint=hint)]
    size = sum(len(piece) for piece in pieces)
    if len(pieces) == 1:
        return pieces[0]
    job.reserve(size)
    body = b"".join(pieces)
    pieces.clear()
    job.release(size)
    return body


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
