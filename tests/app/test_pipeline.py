"""The request pipeline alone (a counting preprocessor, a numpy runner, the real batcher and decode
pool): limits written once, the shared memory budget, readiness, what a departed client leaves
behind, and the statistics every request feeds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest

from app.batching import Batcher
from app.errors import (
    ClientDisconnectedError,
    ImageDecodeError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    TooManyImagesError,
)
from app.imaging import DecodePool
from app.metrics import ServiceMetrics
from app.pipeline import ByteBudget, Limits, Pipeline
from app.readiness import Readiness
from tests.app.conftest import wait_until
from tests.support.runners import RecordingRunner

pytestmark = pytest.mark.anyio

MIB = 1 << 20


def limits(**overrides: int) -> Limits:
    values = {
        "max_image_bytes": 1000,
        "max_image_pixels": 10_000,
        "max_images_per_request": 4,
        "max_inflight_bytes": 64 * MIB,
        "image_elements": 3 * 2 * 2,
    }
    values.update(overrides)
    return Limits(**values)


class CountingPreprocessor:
    """Bytes to a tiny image whose first pixel is the first byte; counts calls; may block or fail."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.calls = 0

    def __call__(self, data: bytes) -> np.ndarray:
        self.calls += 1
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        if data == b"bad":
            raise ImageDecodeError("not an image")
        return np.full((3, 2, 2), data[0], dtype=np.float32)


@pytest.fixture
async def parts() -> AsyncIterator[dict]:
    runner = RecordingRunner()
    metrics = ServiceMetrics(max_batch_size=8)
    batcher = Batcher(
        runner,
        max_batch_size=8,
        max_batch_delay_ms=0,
        max_queue_size=64,
        request_timeout_s=10,
        observer=metrics,
    )
    pool = DecodePool(1)
    preprocessor = CountingPreprocessor()
    readiness = Readiness()
    readiness.mark_ready()
    pipeline = Pipeline(
        limits=limits(),
        readiness=readiness,
        preprocessor=preprocessor,  # type: ignore[arg-type]
        pool=pool,
        batcher=batcher,
        metrics=metrics,
    )
    batcher.start()
    try:
        yield {"pipeline": pipeline, "runner": runner, "preprocessor": preprocessor, "pool": pool}
    finally:
        await batcher.stop(1)
        pool.shutdown(cancel_futures=True)


def test_the_request_limit_is_every_image_at_its_limit_plus_framing_within_the_budget() -> None:
    # 4 x (1000 + 4096) + 64 KiB, worked by hand; JSON tensors (12 elements x 28 B) are smaller.
    assert limits().max_request_bytes == 4 * (1000 + 4096) + 65536
    # 3x224x224 JSON floats (4.2 MB) outweigh a 1000-byte file.
    assert limits(image_elements=150528).max_request_bytes == 4 * (150528 * 28 + 4096) + 65536
    # Never more than the budget: such a request could never be admitted.
    assert limits(max_inflight_bytes=50_000).max_request_bytes == 50_000


def test_limits_name_the_setting_to_change() -> None:
    with pytest.raises(TooManyImagesError, match="TRANSXNET_MAX_IMAGES_PER_REQUEST"):
        limits().check_image_count(5)
    with pytest.raises(PayloadTooLargeError, match="TRANSXNET_MAX_IMAGE_BYTES"):
        limits().check_image_bytes(1001)
    with pytest.raises(PayloadTooLargeError, match="TRANSXNET_MAX_INFLIGHT_BYTES"):
        limits().check_request_bytes(limits().max_request_bytes + 1)
    limits().check_image_count(4)
    limits().check_image_bytes(1000)


def test_the_byte_budget_never_admits_more_than_its_limit_across_threads() -> None:
    budget = ByteBudget(1000)
    admitted: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(200):
            if budget.try_reserve(7):
                with lock:
                    admitted.append(7)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == budget.held <= 1000
    assert budget.held > 1000 - 7  # filled, not starved


async def test_a_job_runs_encoded_images_in_order_and_releases_what_it_reserved(parts: dict) -> None:
    pipeline: Pipeline = parts["pipeline"]
    async with pipeline.job() as job:
        results = await job.run_encoded([b"\x03", b"\x01", b"\x02"], ["id"])
        assert job.reserved == 3 * pipeline.limits.image_tensor_bytes
    assert [float(r["id"]) for r in results] == [3.0, 1.0, 2.0]
    assert pipeline.budget.held == 0
    stats = pipeline.metrics.statistics.as_triton("m", "1")
    assert stats["inference_count"] == 3 and stats["inference_stats"]["success"]["count"] == 1
    assert stats["execution_count"] == len(parts["runner"].batches)


async def test_a_failed_job_releases_its_bytes_and_counts_as_a_failure(parts: dict) -> None:
    pipeline: Pipeline = parts["pipeline"]
    with pytest.raises(ImageDecodeError):
        async with pipeline.job() as job:
            job.reserve(500)
            await job.run_encoded([b"\x01", b"bad"], ["id"])
    assert pipeline.budget.held == 0
    assert parts["runner"].batches == []  # the good image was never queued either
    stats = pipeline.metrics.statistics.as_triton("m", "1")["inference_stats"]
    assert (stats["fail"]["count"], stats["success"]["count"]) == (1, 0)


async def test_a_reservation_past_the_budget_is_overloaded_and_holds_nothing(parts: dict) -> None:
    pipeline: Pipeline = parts["pipeline"]
    with pytest.raises(OverloadedError) as raised:
        async with pipeline.job() as job:
            job.reserve(pipeline.budget.limit - 10)
            job.reserve(11)
    assert raised.value.retry_after_s == 1
    assert pipeline.budget.held == 0


async def test_a_job_is_refused_unless_the_service_accepts_work(parts: dict) -> None:
    pipeline: Pipeline = parts["pipeline"]
    pipeline.readiness.begin_draining()
    with pytest.raises(NotReadyError, match="shutting down"):
        async with pipeline.job():
            pass


async def test_a_departed_client_s_queued_decodes_never_run(parts: dict) -> None:
    pipeline: Pipeline = parts["pipeline"]
    gate = threading.Event()
    pipeline.preprocessor = blocking = CountingPreprocessor(gate)  # type: ignore[assignment]
    gone = asyncio.Event()

    async def client_gone() -> None:
        await gone.wait()

    async with pipeline.job() as job:
        work = asyncio.create_task(
            job.run_encoded([b"\x01", b"\x02", b"\x03"], ["id"], client_gone=client_gone)
        )
        await wait_until(lambda: blocking.calls == 1)  # one decode thread: the other two wait
        gone.set()
        with pytest.raises(ClientDisconnectedError):
            await work
        gate.set()
    await wait_until(lambda: parts["pool"].outstanding == 0)
    assert blocking.calls == 1
    assert parts["runner"].batches == []
    assert pipeline.budget.held == 0


async def test_a_large_request_cannot_put_another_request_s_image_behind_all_of_its_own(parts: dict) -> None:
    pipeline: Pipeline = parts["pipeline"]
    gate = threading.Event()
    order: list[int] = []

    class Recording(CountingPreprocessor):
        def __call__(self, data: bytes) -> np.ndarray:
            order.append(data[0])
            return super().__call__(data)

    pipeline.preprocessor = recording = Recording(gate)  # type: ignore[assignment]
    pipeline.limits = limits(max_images_per_request=8)

    async def run(blobs: list[bytes]) -> list:
        async with pipeline.job() as job:
            return await job.run_encoded(blobs, ["id"])

    large = asyncio.create_task(run([bytes([i]) for i in range(1, 9)]))
    await wait_until(lambda: recording.calls == 1)  # the one decode thread holds image 1
    small = asyncio.create_task(run([bytes([100])]))
    await asyncio.sleep(0.05)  # let the small request queue its decode
    gate.set()
    await asyncio.gather(large, small)
    # The small request's image is decoded next, not after the large request's seven others.
    assert order[:2] == [1, 100]
    assert sorted(order) == [1, 2, 3, 4, 5, 6, 7, 8, 100]
