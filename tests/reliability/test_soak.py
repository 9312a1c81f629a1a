"""Soak: thousands of distinct photos at concurrency 32 through a real uvicorn process serving the
real exported TransXNet-T; every answer is the offline single-image answer for its own image.

This is what batching must never get wrong: images from different requests share batches of varying
size, and a mix-up (wrong row handed back, stale buffer reused, a batch-size-dependent kernel) would
show as a response that belongs to another image. The offline answers are computed after the soak,
with the server stopped, so the reference never competes with the server for the cores.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from tests.reliability.conftest import OfflineReference, distinct_images
from tests.support.processes import service_process

pytestmark = pytest.mark.slow

#: Override for a quicker local run (CI uses the default).
REQUESTS = int(os.environ.get("TRANSXNET_SOAK_REQUESTS", "2000"))
CONCURRENCY = 32


async def soak(base: str, blobs: list[bytes]) -> list[httpx.Response | Exception]:
    """Closed loop: CONCURRENCY workers, each sends the next unsent image when answered."""
    responses: list[httpx.Response | Exception] = [RuntimeError("not sent")] * len(blobs)
    next_index = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(blobs):
                index = next_index
                next_index += 1
                content_type = "image/png" if blobs[index].startswith(b"\x89PNG") else "image/jpeg"
                try:
                    responses[index] = await client.post(
                        "/classify", content=blobs[index], headers={"content-type": content_type}
                    )
                except httpx.HTTPError as exc:
                    responses[index] = exc

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return responses


def test_soak_every_answer_is_the_offline_answer_for_its_own_image(exported_t_path) -> None:
    blobs = distinct_images(REQUESTS, seed=2024)
    assert len(set(blobs)) == REQUESTS
    with service_process(exported_t_path, intra_op_threads="0") as service:
        responses = asyncio.run(soak(service.base, blobs))
        statuses = [r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in responses]
        assert statuses.count(200) == REQUESTS, {s: statuses.count(s) for s in set(statuses)}
        assert service.metric("transxnet_queue_depth") == 0
        assert (
            service.labelled_metric("transxnet_requests_total", route="/classify", status="200") == REQUESTS
        )
        batches = service.metric("transxnet_batch_size_count")
        assert service.metric("transxnet_images_processed_total") == REQUESTS
        assert batches < REQUESTS, "no batch ever held more than one image: batching was not exercised"
        assert service.stop() == 0

    reference = OfflineReference(exported_t_path, intra_op_threads=0)  # the server is gone
    for response, blob in zip(responses, blobs, strict=True):
        assert isinstance(response, httpx.Response)
        reference.assert_matches(response.json()["results"][0]["predictions"], blob)
