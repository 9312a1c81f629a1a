"""Overload against a real process: a small queue in front of a slowed runner.

What a client and a load balancer must be able to rely on when the service is saturated: the excess
is refused at once with 503 + Retry-After (not after waiting for the model), what was admitted is
still answered correctly, readiness keeps answering (an overloaded replica is busy, not dead), and the
service serves normally once the burst is over.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.reliability.conftest import JPEG, OfflineReference, assert_error, distinct_images
from tests.support.processes import service_process

pytestmark = pytest.mark.slow

RUNNER_DELAY_S = 2.0
BURST = 24


def test_overload_refuses_the_excess_quickly_serves_the_admitted_and_recovers(reliability_fake_model) -> None:
    reference = OfflineReference(reliability_fake_model)
    blobs = distinct_images(BURST + 1, seed=41)
    readiness: list[tuple[int | None, float]] = []
    stop_polling = threading.Event()

    with service_process(
        reliability_fake_model,
        helper_args=["--slow-s", str(RUNNER_DELAY_S)],
        max_batch_size="2",
        max_batch_delay_ms="0",
        max_queue_size="4",
        max_images_per_request="4",
    ) as service:

        def poll_readiness() -> None:
            with httpx.Client(timeout=RUNNER_DELAY_S * 5) as client:
                while not stop_polling.is_set():
                    started = time.monotonic()
                    try:
                        status: int | None = client.get(service.url("/readyz")).status_code
                    except httpx.TransportError:
                        status = None
                    readiness.append((status, time.monotonic() - started))
                    stop_polling.wait(0.05)

        # One pooled client for the burst: a client per thread would spend the timed window building
        # SSL contexts under the GIL, measuring the test rather than the server.
        client = httpx.Client(limits=httpx.Limits(max_connections=BURST), timeout=60)

        def classify(blob: bytes) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = client.post(service.url("/classify"), content=blob, headers=JPEG)
            return response, time.monotonic() - started

        poller = threading.Thread(target=poll_readiness, daemon=True)
        poller.start()
        with ThreadPoolExecutor(BURST) as pool:
            outcomes = list(pool.map(classify, blobs[:BURST]))
        stop_polling.set()
        poller.join(timeout=30)

        refused = [(r, t) for r, t in outcomes if r.status_code == 503]
        admitted = [(r, blob) for (r, _), blob in zip(outcomes, blobs, strict=False) if r.status_code == 200]
        assert len(refused) + len(admitted) == BURST, [r.status_code for r, _ in outcomes]
        # 2 running + 4 queued at most while the burst arrives: most of it must be refused.
        assert len(refused) >= BURST // 2
        assert admitted
        for response, elapsed in refused:
            assert_error(response, 503, "queue_full")
            assert int(response.headers["retry-after"]) >= 1
            # Refused without waiting for the model: well before one slowed batch could finish.
            assert elapsed < RUNNER_DELAY_S / 2, sorted(round(t, 3) for _, t in refused)
        for response, blob in admitted:
            reference.assert_matches(response.json()["results"][0]["predictions"], blob)

        # /readyz answered throughout, never waiting behind the model.
        assert len(readiness) >= 5
        assert {status for status, _ in readiness} == {200}
        assert max(elapsed for _, elapsed in readiness) < RUNNER_DELAY_S / 2

        # Recovered: the queue is empty and the next request is served.
        assert service.metric("transxnet_queue_depth") == 0
        response, _ = classify(blobs[BURST])
        assert response.status_code == 200
        reference.assert_matches(response.json()["results"][0]["predictions"], blobs[BURST])
        client.close()
