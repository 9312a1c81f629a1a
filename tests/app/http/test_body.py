"""The one HTTP body reader, through real routes: exact Content-Length, limits before and while
reading, compressed bodies checked to their trailer and bounded after inflation, a client that hangs
up mid-upload, and the memory budget shared by every request."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import zlib

import httpx
import pytest

from app.main import create_app
from tests.app.conftest import TEST_LIMITS, make_settings, running_app, wait_until
from tests.support.images import encoded_image
from tests.support.runners import GatedRunner

pytestmark = pytest.mark.anyio

PNG = {"content-type": "image/png"}


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


@pytest.mark.parametrize("value", ["+183", " 183", "1_8_3", "0x10", "1e3", "-1", "12345678901234567890"])
async def test_a_content_length_that_is_not_plain_digits_is_400(client, value: str) -> None:
    # httpx would correct the header; the ASGI transport sends what the test gives.
    response = await client.post("/classify", content=b"x" * 183, headers={**PNG, "content-length": value})
    assert_error(response, 400, "malformed_request")


async def test_a_gzip_image_body_is_inflated_and_served(client, reference) -> None:
    image = encoded_image(4)
    response = await client.post(
        "/classify", content=gzip.compress(image), headers={**PNG, "content-encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    top = response.json()["results"][0]["predictions"][0]["index"]
    assert top == int(reference.probabilities(image).argmax())


async def test_deflate_is_accepted_and_an_unknown_encoding_is_refused(client) -> None:
    image = encoded_image(5)
    deflated = await client.post(
        "/classify", content=zlib.compress(image), headers={**PNG, "content-encoding": "deflate"}
    )
    assert deflated.status_code == 200, deflated.text
    refused = await client.post("/classify", content=image, headers={**PNG, "content-encoding": "br"})
    assert "Content-Encoding" in assert_error(refused, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("mangle", "fragment"),
    [
        (lambda data: data[:-6], "truncated"),  # the CRC and size trailer cut off
        (lambda data: data + b"junk", "after its end"),
        (lambda data: data[:10] + bytes(len(data) - 10), "could not be decompressed"),
    ],
    ids=["no-trailer", "junk-after", "corrupt"],
)
async def test_a_broken_gzip_body_is_400(client, mangle, fragment: str) -> None:
    body = mangle(gzip.compress(encoded_image(6)))
    response = await client.post("/classify", content=body, headers={**PNG, "content-encoding": "gzip"})
    assert fragment in assert_error(response, 400, "malformed_request")


async def test_a_gzip_bomb_stops_inflating_at_the_limit(client) -> None:
    bomb = gzip.compress(b"\0" * (50 * TEST_LIMITS["max_image_bytes"]))
    assert len(bomb) < TEST_LIMITS["max_image_bytes"] // 10
    response = await client.post("/classify", content=bomb, headers={**PNG, "content-encoding": "gzip"})
    assert_error(response, 413, "payload_too_large")
    # Inflated to one past the limit, not to 10 MB: nothing of it is held.
    assert client.app.state.service.pipeline.budget.held == 0


async def test_v2_and_rest_routes_share_one_limit_for_a_declared_length(client) -> None:
    limit = client.app.state.service.pipeline.limits.max_request_bytes
    headers = {"content-type": "multipart/form-data; boundary=x", "content-length": str(limit + 1)}
    rest = await client.post("/classify", content=b"--x--\r\n", headers=headers)
    assert_error(rest, 413, "payload_too_large")
    v2 = await client.post(
        "/v2/models/transxnet_fake/infer", content=b"{}", headers={"content-length": str(limit + 1)}
    )
    assert v2.status_code == 400 and str(limit) in v2.json()["error"]


async def test_a_client_that_hangs_up_mid_upload_is_499_not_a_server_error(fake_model_path) -> None:
    app = create_app(make_settings(fake_model_path))
    messages = [
        {"type": "http.request", "body": encoded_image(1)[:100], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/classify",
        "raw_path": b"/classify",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"image/png"), (b"host", b"service")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    async with app.router.lifespan_context(app):
        service = app.state.service
        await wait_until(lambda: service.readiness.accepting, 30)
        await app(scope, receive, send)
        metrics = (
            await httpx.AsyncClient(transport=httpx.ASGITransport(app=app)).get("http://s/metrics")
        ).text
    assert sent[0]["status"] == 499
    assert json.loads(sent[1]["body"])["error"]["code"] == "client_closed_request"
    assert 'route="/classify",status="499"' in metrics
    assert 'route="/classify",status="500"' not in metrics
    assert service.pipeline.budget.held == 0


async def test_the_memory_budget_refuses_with_503_and_is_released_when_requests_end(fake_model_path) -> None:
    gate = threading.Event()
    # 1 MiB: one small image's body, decode and 602 KB decoded input fit, a second does not.
    settings = make_settings(
        fake_model_path, max_inflight_bytes=1 << 20, max_image_pixels=50_000, max_batch_size=1
    )
    async with running_app(settings, lambda inner: GatedRunner(inner, gate)) as client:
        pipeline = client.app.state.service.pipeline
        held = asyncio.create_task(client.post("/classify", content=encoded_image(1), headers=PNG))
        await wait_until(lambda: pipeline.batcher.pending == 1)
        assert pipeline.budget.held > 3 * 224 * 224 * 4
        refused = await client.post("/classify", content=encoded_image(2), headers=PNG)
        assert "budget" in assert_error(refused, 503, "overloaded")
        assert refused.headers["retry-after"] == "1"
        gate.set()
        assert (await held).status_code == 200
        assert pipeline.budget.held == 0
        assert (await client.post("/classify", content=encoded_image(2), headers=PNG)).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert "transxnet_overloaded_requests_total 1.0" in metrics
