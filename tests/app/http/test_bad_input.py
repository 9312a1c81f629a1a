"""Bad input gets the right status and the JSON error shape, and never hurts other requests."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from PIL import Image

from tests.app.conftest import TEST_LIMITS
from tests.support.images import encoded_image, solid_png

pytestmark = pytest.mark.anyio


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def ico_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, format="ICO")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"this is not an image at all", "image/png", 400, "invalid_image"),
        (encoded_image(1)[:200], "image/png", 400, "invalid_image"),  # truncated PNG
        (b"", "image/png", 400, "invalid_image"),
        (encoded_image(1), "text/plain", 415, "unsupported_media_type"),
        (ico_bytes(), "application/octet-stream", 415, "unsupported_media_type"),
        (solid_png(1200, 1000), "image/png", 413, "payload_too_large"),  # 1.2 MP > 1 MP
    ],
    ids=["not-an-image", "corrupt", "empty", "wrong-content-type", "unsupported-format", "too-many-pixels"],
)
@pytest.mark.parametrize("route", ["/classify", "/features"])
async def test_bad_raw_body_gets_its_status_and_code(client, route, body, content_type, status, code) -> None:
    response = await client.post(route, content=body, headers={"content-type": content_type})
    assert_error(response, status, code)


async def test_image_over_max_bytes_is_413_before_decoding(client) -> None:
    big = b"\x89PNG" + b"\0" * TEST_LIMITS["max_image_bytes"]
    response = await client.post("/classify", content=big, headers={"content-type": "image/png"})
    assert_error(response, 413, "payload_too_large")


async def test_chunked_body_over_max_bytes_is_cut_off_with_413(client) -> None:
    async def chunks():
        for _ in range(TEST_LIMITS["max_image_bytes"] // 10_000 + 5):
            yield b"\0" * 10_000

    response = await client.post("/classify", content=chunks(), headers={"content-type": "image/png"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")


async def test_multipart_part_over_max_bytes_is_413(client) -> None:
    big = b"\0" * (TEST_LIMITS["max_image_bytes"] + 1)
    response = await client.post("/classify", files=[("file", ("big.png", big, "image/png"))])
    assert_error(response, 413, "payload_too_large")


async def test_declared_length_over_the_request_limit_is_refused_before_reading(client) -> None:
    headers = {"content-type": "multipart/form-data; boundary=x", "content-length": str(10**10)}
    response = await client.post("/classify", content=b"--x--\r\n", headers=headers)
    assert_error(response, 413, "payload_too_large")


async def test_too_many_images_is_413_too_many_images(client) -> None:
    count = TEST_LIMITS["max_images_per_request"] + 1
    files = [("files", (f"{i}.png", b"x", "image/png")) for i in range(count)]
    error = assert_error(await client.post("/classify", files=files), 413, "too_many_images")
    assert str(TEST_LIMITS["max_images_per_request"]) in error["message"]


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A hand-built multipart body: (field name, filename or None for a plain field, data)."""
    boundary = "testboundary"
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    "parts",
    [
        [("file", None, b"not a file")],
        [("image", "a.png", encoded_image(1))],
        [("top_k", None, b"3")],
        [],
    ],
    ids=["field-without-filename", "unknown-file-field", "parameter-as-field", "no-parts"],
)
async def test_malformed_multipart_is_400_malformed_request(client, parts) -> None:
    body, headers = multipart(parts)
    assert_error(await client.post("/classify", content=body, headers=headers), 400, "malformed_request")


async def test_broken_multipart_framing_is_400(client) -> None:
    headers = {"content-type": "multipart/form-data"}  # no boundary
    assert_error(
        await client.post("/classify", content=b"--x\r\n", headers=headers), 400, "malformed_request"
    )


async def test_wrong_part_content_type_is_415(client) -> None:
    response = await client.post("/classify", files=[("file", ("a.txt", encoded_image(1), "text/plain"))])
    assert_error(response, 415, "unsupported_media_type")


async def test_one_bad_image_fails_its_request_but_not_concurrent_ones(client) -> None:
    good = [encoded_image(50 + i) for i in range(3)]
    bad_files = [("files", ("ok.png", good[0], "image/png")), ("files", ("bad.png", b"garbage", "image/png"))]
    responses = await asyncio.gather(
        client.post("/classify", files=bad_files),
        *(client.post("/classify", content=blob, headers={"content-type": "image/png"}) for blob in good),
    )
    assert_error(responses[0], 400, "invalid_image")
    assert [r.status_code for r in responses[1:]] == [200, 200, 200]


async def test_unknown_route_is_404_in_the_error_shape(client) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.get("/classify"), 405, "method_not_allowed")
