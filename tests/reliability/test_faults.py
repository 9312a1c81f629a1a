"""Faults in a real service process: a failing batch, clients that hang up while queued, SIGTERM
with batched multi-image requests in flight.

tests/app/test_process.py already proves SIGTERM drains three single-image requests at batch size 1
with a grace period; here the drain is exercised with batching on, multi-image requests split over
several batches, no grace period, and every answer checked against the offline reference.
"""

from __future__ import annotations

import signal
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.reliability.conftest import (
    JPEG,
    OfflineReference,
    assert_error,
    distinct_images,
)
from tests.support.processes import ServiceProcess, service_process

pytestmark = pytest.mark.slow


def post_image(service: ServiceProcess, blob: bytes) -> httpx.Response:
    return httpx.post(service.url("/classify"), content=blob, headers=JPEG, timeout=60)


def test_an_inference_error_fails_only_the_requests_in_its_batch(reliability_fake_model) -> None:
    # Batches of exactly 4: the collector waits (up to 3 s, whether or not more images are being
    # decoded) for 4 images, so 8 concurrent requests form two batches; the first one raises after
    # its delay, the second is computed.
    reference = OfflineReference(reliability_fake_model)
    blobs = distinct_images(8, seed=11)
    with (
        service_process(
            reliability_fake_model,
            helper_args=["--slow-s", "0.5", "--fail-batches", "1"],
            max_batch_size="4",
            max_batch_delay_ms="3000",
            batch_wait="always",
        ) as service,
        ThreadPoolExecutor(8) as pool,
    ):
        responses = list(pool.map(lambda blob: post_image(service, blob), blobs))
        failed = [r for r in responses if r.status_code == 500]
        served = [(r, blob) for r, blob in zip(responses, blobs, strict=True) if r.status_code == 200]
        assert len(failed) == 4 and len(served) == 4, [r.status_code for r in responses]
        for response in failed:
            assert_error(response, 500, "inference_failed")
        for response, blob in served:
            reference.assert_matches(response.json()["results"][0]["predictions"], blob)

        # The failure stays local: the service is still ready and the next batch is computed.
        assert httpx.get(service.url("/readyz"), timeout=5).status_code == 200
        later = distinct_images(4, seed=12)
        again = list(pool.map(lambda blob: post_image(service, blob), later))
        assert [r.status_code for r in again] == [200] * 4
        assert service.labelled_metric("transxnet_requests_total", route="/classify", status="500") == 4
        assert "inference failed on a batch of 4 images" in service.log()


def established_connections(pid: int, port: int) -> int:
    return sum(
        1
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port
    )


def raw_request(port: int, blob: bytes) -> socket.socket:
    """Send a whole /classify request on a bare socket and leave it waiting for the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(blob)}\r\n\r\n"
    ).encode()
    sock.sendall(head + blob)
    return sock


def test_clients_that_hang_up_while_queued_leave_no_work_or_connections_behind(
    reliability_fake_model,
) -> None:
    delay_s = 2.0  # room to queue and hang up three clients while the first batch computes
    blobs = distinct_images(5, seed=22)
    with (
        service_process(
            reliability_fake_model,
            helper_args=["--slow-s", str(delay_s)],
            max_batch_size="1",
            max_batch_delay_ms="0",
        ) as service,
        ThreadPoolExecutor(1) as pool,
    ):
        port = int(service.base.rsplit(":", 1)[1])
        baseline = established_connections(service.pid, port)
        running = pool.submit(post_image, service, blobs[0])
        # The queue-wait histogram is observed when a batch starts: from then on blobs[0] is computing
        # and everything sent next waits in the queue behind it.
        service.wait_until(
            lambda: service.metric("transxnet_queue_wait_seconds_count") == 1, 10, "first batch running"
        )
        sockets = [raw_request(port, blob) for blob in blobs[1:4]]
        service.wait_until(lambda: service.metric("transxnet_queue_depth") == 3, 10, "three requests queued")
        for sock in sockets:  # hang up hard (RST), as a crashed or timed-out client does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

        assert running.result(timeout=30).status_code == 200
        bound = 4 * delay_s + 10
        service.wait_until(lambda: service.metric("transxnet_queue_depth") == 0, bound, "empty queue")
        service.wait_until(
            lambda: established_connections(service.pid, port) <= baseline,
            bound,
            "abandoned connections closed",
        )
        assert post_image(service, blobs[4]).status_code == 200
        assert service.metric("transxnet_queue_depth") == 0
        assert service.labelled_metric("transxnet_requests_total", status="500") == 0
        # Only the two requests whose clients waited were computed.
        assert service.metric("transxnet_images_processed_total") == 2


def test_sigterm_with_batched_multi_image_requests_in_flight_answers_all_and_exits_zero(
    reliability_fake_model,
) -> None:
    reference = OfflineReference(reliability_fake_model)
    blobs = distinct_images(12, seed=31)
    singles = blobs[:3]
    groups = [blobs[3:6], blobs[6:9], blobs[9:12]]  # three images each: split over batches of 4

    def post_group(group: list[bytes]) -> httpx.Response:
        files = [("files", (f"{i}.jpg", blob, "image/jpeg")) for i, blob in enumerate(group)]
        return httpx.post(service.url("/classify"), files=files, timeout=60)

    with (
        service_process(
            reliability_fake_model,
            helper_args=["--slow-s", "0.5"],
            max_batch_size="4",
            max_batch_delay_ms="20",
            shutdown_grace_s="0",
        ) as service,
        ThreadPoolExecutor(6) as pool,
    ):
        single_futures = [pool.submit(post_image, service, blob) for blob in singles]
        group_futures = [pool.submit(post_group, group) for group in groups]
        # Every request must have reached the handler before SIGTERM (later ones are refused by
        # design): 6 in progress plus the scrape itself. And with 12 images in batches of 4 at 0.5 s
        # each, work must be queued behind a running batch.
        service.wait_until(
            lambda: (
                service.metric("transxnet_requests_in_progress") >= 7
                and service.metric("transxnet_queue_depth") >= 4
            ),
            20,
            "all requests in progress and images queued",
        )
        service.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for future, blob in zip(single_futures, singles, strict=True):
            response = future.result(timeout=60)
            assert response.status_code == 200, response.text
            reference.assert_matches(response.json()["results"][0]["predictions"], blob)
        for future, group in zip(group_futures, groups, strict=True):
            response = future.result(timeout=60)
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert len(results) == len(group)
            for result, blob in zip(results, group, strict=True):
                reference.assert_matches(result["predictions"], blob)
        assert service.process.wait(timeout=60) == 0, service.log()[-3000:]
        assert time.monotonic() - started < 60
        with pytest.raises(httpx.TransportError):
            httpx.get(service.url("/healthz"), timeout=2)
