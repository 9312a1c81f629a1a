"""Getting image bytes out of a request, within limits, before anything is decoded.

Two shapes are accepted: `multipart/form-data` with `file` / `files` parts (any number up to
`max_images_per_request`), or a raw body with an image content type. Sizes are enforced while
reading (`app.http.body`): a declared `Content-Length` over the limit is refused before a byte is
read, and a chunked body is cut off as soon as it passes the limit, so a hostile client cannot make
us buffer gigabytes. The content-type policy for images is HTTP's, so it lives here.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.errors import (
    ImageDecodeError,
    MalformedRequestError,
    TooManyImagesError,
    UnsupportedMediaTypeError,
)
from app.http.body import read_body, stream_body
from app.imaging import ACCEPTED_FORMATS_TEXT
from app.pipeline import Job, Limits

#: Content types accepted for an image body or part (parameters such as `; charset=` are ignored).
#: The bytes are sniffed regardless, so a client that only knows `application/octet-stream` is fine.
SUPPORTED_CONTENT_TYPES: frozenset[str] = frozenset(
    {
        "image/jpeg",
        "image/jpg",  # not registered, but common enough in the wild to accept
        "image/png",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "image/gif",
        "image/tiff",
        "application/octet-stream",
    }
)
IMAGE_FIELDS = ("file", "files")
#: Non-file form fields tolerated before the parser gives up (parameters belong in the query).
MAX_FORM_FIELDS = 8


def check_content_type(content_type: str | None) -> None:
    """Refuse a declared content type that cannot be an image we decode (415).

    None or an empty string is accepted: the bytes are sniffed anyway. Parameters (`; charset=...`)
    and case are ignored, as RFC 9110 says media types are case-insensitive.
    """
    if not content_type:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type or media_type in SUPPORTED_CONTENT_TYPES:
        return
    raise UnsupportedMediaTypeError(
        f"content type {media_type!r} is not accepted: send one of "
        f"{', '.join(sorted(SUPPORTED_CONTENT_TYPES))} (formats {ACCEPTED_FORMATS_TEXT})"
    )


async def read_images(request: Request, job: Job) -> list[bytes]:
    """The request's encoded images, in order; raises the 4xx `ServiceError` that fits."""
    content_type = request.headers.get("content-type") or ""
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        return await _read_multipart(request, job)
    return [await _read_raw(request, content_type, job)]


async def _read_raw(request: Request, content_type: str, job: Job) -> bytes:
    check_content_type(content_type or None)
    body = await read_body(
        request, job, job.limits.max_image_bytes, what="the image", hint=" (TRANSXNET_MAX_IMAGE_BYTES)"
    )
    if not body:
        raise ImageDecodeError(
            "the request body is empty: send an image as the body (Content-Type image/jpeg, ...) or "
            "as multipart 'file' parts"
        )
    return body


async def _read_multipart(request: Request, job: Job) -> list[bytes]:
    limits = job.limits
    hint = (
        f" (at most {limits.max_images_per_request} images of {limits.max_image_bytes} bytes with their "
        "multipart framing, within the memory budget)"
    )
    parser = MultiPartParser(
        request.headers,
        stream_body(request, job, limits.max_request_bytes, what="the request", hint=hint),
        max_files=limits.max_images_per_request,
        max_fields=MAX_FORM_FIELDS,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise TooManyImagesError(
                f"more than {limits.max_images_per_request} images in one request "
                "(TRANSXNET_MAX_IMAGES_PER_REQUEST): split it"
            ) from None
        raise MalformedRequestError(f"the multipart body could not be parsed: {exc.message}") from None
    try:
        return await _collect_parts(form.multi_items(), limits)
    finally:
        await form.close()


async def _collect_parts(items: list[tuple[str, UploadFile | str]], limits: Limits) -> list[bytes]:
    images: list[bytes] = []
    for name, value in items:
        if name not in IMAGE_FIELDS:
            raise MalformedRequestError(
                f"unexpected form field {name!r}: send images as 'file' or 'files' parts and "
                "parameters (top_k, outputs, format) in the query string"
            )
        if not isinstance(value, UploadFile):
            raise MalformedRequestError(
                f"form field {name!r} is not a file upload: send it with a filename "
                "(curl -F 'file=@photo.jpg')"
            )
        check_content_type(value.content_type)
        if value.size is not None:
            limits.check_image_bytes(value.size, f"image {value.filename!r}")
        data = await value.read()
        if not data:
            raise ImageDecodeError(f"image {value.filename!r} is empty")
        images.append(data)
    if not images:
        raise MalformedRequestError("no image in the request: send 'file' or 'files' parts")
    return images
