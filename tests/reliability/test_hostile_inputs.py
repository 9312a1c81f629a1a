"""Hostile and odd inputs against a real process serving the real TransXNet-T.

Each input gets the status docs/service.md's error table promises, in the JSON error shape (odd but
valid images get 200 and the offline answer), the next valid request is still served, and the
server's memory stays bounded across all of them (decompression bombs, thousands of multipart parts).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from tests.reliability.conftest import (
    JPEG,
    OfflineReference,
    assert_error,
    distinct_images,
)
from tests.support.processes import ServiceProcess, service_process

pytestmark = pytest.mark.slow

MAX_IMAGE_BYTES = 2 * 2**20  # small, so the oversized bodies stay cheap to send
MIB = 2**20


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(side: int = 320) -> Image.Image:
    with Image.open(io.BytesIO(distinct_images(1, seed=5, max_side=side)[0])) as image:
        return image.convert("RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_bomb(width: int, height: int) -> bytes:
    """A ~100-byte PNG declaring width x height RGB pixels (its data is a few compressed zeros)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    )


def jpeg_header_bomb() -> bytes:
    """A real JPEG whose frame header is rewritten to declare 65000 x 65000 pixels."""
    data = bytearray(encode(photo(64), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(96 * 128, dtype=np.uint32).reshape(96, 128) * 5).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def animated_gif() -> bytes:
    frames = [photo(96).quantize(64), photo(80).resize((96, 72)).quantize(64), Image.new("P", (96, 72), 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def palette_png() -> bytes:
    image = photo(128).quantize(32)
    return encode(image, "PNG", transparency=0)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostileboundary") -> bytes:
    body = bytearray()
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        content_type = "Content-Type: image/png\r\n" if filename else ""
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{content_type}\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body)


MULTIPART = {"content-type": "multipart/form-data; boundary=hostileboundary"}


@dataclass(frozen=True)
class Case:
    """One hostile input: what to send and what must come back (code None: a 200 with results)."""

    body: bytes | None
    headers: dict[str, str]
    status: int
    code: str | None = None
    chunked: bytes | None = None  # sent without Content-Length, in 64 KiB chunks


@functools.cache
def cases() -> dict[str, Case]:
    """Built on first use, not at collection: the bomb and the 5000-part bodies take a moment."""
    valid_jpeg = encode(photo(), "JPEG", quality=90)
    tiny_png = encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    return {
        "zero-bytes": Case(b"", JPEG, 400, "invalid_image"),
        "random-bytes": Case(np.random.default_rng(7).bytes(4096), JPEG, 400, "invalid_image"),
        "truncated-jpeg": Case(valid_jpeg[: len(valid_jpeg) // 2], JPEG, 400, "invalid_image"),
        "png-bomb-header": Case(
            png_header_bomb(50_000, 50_000), {"content-type": "image/png"}, 413, "payload_too_large"
        ),
        "jpeg-bomb-header": Case(jpeg_header_bomb(), JPEG, 413, "payload_too_large"),
        "png-bomb-within-pixel-limit": Case(
            encode(Image.new("RGB", (6000, 6000)), "PNG"), {"content-type": "image/png"}, 200
        ),
        "1x1": Case(tiny_png, {"content-type": "image/png"}, 200),
        "16-bit-png": Case(sixteen_bit_png(), {"content-type": "image/png"}, 200),
        "cmyk-jpeg": Case(encode(photo().convert("CMYK"), "JPEG"), JPEG, 200),
        "grayscale-jpeg": Case(encode(photo().convert("L"), "JPEG"), JPEG, 200),
        "rgba-png": Case(encode(photo().convert("RGBA"), "PNG"), {"content-type": "image/png"}, 200),
        "palette-png": Case(palette_png(), {"content-type": "image/png"}, 200),
        "animated-gif": Case(animated_gif(), {"content-type": "image/gif"}, 200),
        "jpeg-labelled-png": Case(valid_jpeg, {"content-type": "image/png"}, 200),
        "jpeg-labelled-text": Case(valid_jpeg, {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        "oversized-body": Case(b"\xff\xd8" + b"\0" * MAX_IMAGE_BYTES, JPEG, 413, "payload_too_large"),
        "oversized-chunked-body": Case(
            None, JPEG, 413, "payload_too_large", chunked=b"\xff\xd8" + b"\0" * (MAX_IMAGE_BYTES + MIB)
        ),
        "5000-image-parts": Case(
            multipart([("files", f"{i}.png", tiny_png) for i in range(5000)]),
            MULTIPART,
            413,
            "too_many_images",
        ),
        "5000-form-fields": Case(
            multipart([(f"field{i}", None, b"x") for i in range(5000)]), MULTIPART, 400, "malformed_request"
        ),
    }


CASE_NAMES = (
    "zero-bytes",
    "random-bytes",
    "truncated-jpeg",
    "png-bomb-header",
    "jpeg-bomb-header",
    "png-bomb-within-pixel-limit",
    "1x1",
    "16-bit-png",
    "cmyk-jpeg",
    "grayscale-jpeg",
    "rgba-png",
    "palette-png",
    "animated-gif",
    "jpeg-labelled-png",
    "jpeg-labelled-text",
    "oversized-body",
    "oversized-chunked-body",
    "5000-image-parts",
    "5000-form-fields",
)


@pytest.fixture(scope="module")
def served(exported_t_path) -> Iterator[tuple[ServiceProcess, OfflineReference, list[int]]]:
    """The real T in `python -m app`, a reference for it, and RSS samples (first: after warm-up)."""
    reference = OfflineReference(exported_t_path)
    with service_process(
        exported_t_path, max_batch_size="4", max_image_bytes=str(MAX_IMAGE_BYTES)
    ) as service:
        assert_served(service, reference, distinct_images(1, seed=1)[0])
        yield service, reference, [psutil.Process(service.pid).memory_info().rss]


def assert_served(service: ServiceProcess, reference: OfflineReference, blob: bytes) -> None:
    response = httpx.post(service.url("/classify"), content=blob, headers=JPEG, timeout=120)
    assert response.status_code == 200, response.text
    reference.assert_matches(response.json()["results"][0]["predictions"], blob)


def send(service: ServiceProcess, case: Case) -> httpx.Response:
    url = service.url("/classify")
    if case.chunked is not None:
        data = case.chunked

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), 64 * 1024):
                yield data[start : start + 64 * 1024]

        return httpx.post(url, content=chunks(), headers=case.headers, timeout=120)
    return httpx.post(url, content=case.body, headers=case.headers, timeout=120)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_input_gets_its_documented_status_and_the_next_request_is_served(served, name) -> None:
    service, reference, rss = served
    case = cases()[name]
    response = send(service, case)
    if case.code is None:
        assert response.status_code == 200, response.text
        assert case.body is not None
        reference.assert_matches(response.json()["results"][0]["predictions"], case.body)
    else:
        assert_error(response, case.status, case.code)
    assert_served(service, reference, distinct_images(1, seed=100 + len(rss))[0])
    rss.append(psutil.Process(service.pid).memory_info().rss)


def test_every_case_is_named_for_the_parametrization() -> None:
    assert tuple(cases()) == CASE_NAMES


def test_server_memory_stays_bounded_after_every_hostile_input(served) -> None:
    service, _, rss = served
    if len(rss) <= len(CASE_NAMES) // 2:
        pytest.skip("measures what the hostile-input cases of this module left behind: run them first")
    # Generous: a 36-Mpixel decode holds ~110 MB of pixels; nothing may grow by gigabytes or keep growing.
    assert max(rss) - rss[0] < 768 * MIB, [round(r / MIB) for r in rss]
    assert rss[-1] < 1.5 * 2**30, [round(r / MIB) for r in rss]
    assert service.metric("transxnet_queue_depth") == 0
