"""The dynamic batcher alone, with a numpy runner: batching, ordering, back-pressure, timeouts,
cancellation and failure isolation."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from app.batching import Batcher
from app.errors import InferenceError, NotReadyError, QueueFullError, RequestTimeoutError
from tests.app.conftest import wait_until
from tests.support.runners import RecordingRunner, image

pytestmark = pytest.mark.anyio


def make_batcher(runner: RecordingRunner, **overrides: object) -> Batcher:
    # "always" unless a test says otherwise: most tests here exercise the delay itself.
    options = {
        "max_batch_size": 8,
        "max_batch_delay_ms": 20,
        "max_queue_size": 64,
        "request_timeout_s": 10,
        "wait": "always",
    }
    options.update(overrides)
    return Batcher(runner, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_batch_size": 0},
        {"max_batch_delay_ms": -1},
        {"max_batch_delay_ms": float("inf")},
        {"max_queue_size": 0},
        {"request_timeout_s": 0},
        {"wait": "sometimes"},
        {"instances": 0},
        {"wide_runner": object()},
    ],
)
def test_invalid_batcher_settings_raise_value_error_naming_the_setting(overrides: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        make_batcher(RecordingRunner(), **overrides)


def test_runner_without_run_method_is_refused() -> None:
    with pytest.raises(ValueError, match="run"):
        make_batcher(object())  # type: ignore[arg-type]


async def test_concurrent_requests_share_batches_and_each_gets_its_own_result() -> None:
    runner = RecordingRunner()
    batcher = make_batcher(runner, max_batch_delay_ms=50)
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit([image(i)], ["id"]) for i in range(20)))
    finally:
        await batcher.stop()
    assert [float(r[0]["id"]) for r in results] == [float(i) for i in range(20)]
    sizes = [len(b) for b in runner.batches]
    assert max(sizes) > 1
    assert all(size <= 8 for size in sizes)
    assert sorted(runner.images_seen) == [float(i) for i in range(20)]


@pytest.mark.parametrize("instances", [1, 2, 3])
async def test_instances_run_that_many_batches_at_once_and_no_more(instances: int) -> None:
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher = make_batcher(runner, max_batch_size=2, wait="incoming", instances=instances)
    batcher.start()
    try:
        pending = [asyncio.ensure_future(batcher.submit([image(i)], ["id"])) for i in range(8)]
        await wait_until(lambda: runner.in_flight.now == instances)
        await asyncio.sleep(0.1)  # room for a collector too many to start a batch of its own
        assert runner.in_flight.now == instances
        gate.set()
        results = await asyncio.gather(*pending)
    finally:
        gate.set()
        await batcher.stop()
    assert [float(r[0]["id"]) for r in results] == [float(i) for i in range(8)]
    assert runner.in_flight.peak == instances
    assert sorted(runner.images_seen) == [float(i) for i in range(8)]
    assert not batcher.running  # stop() ended every collector


async def test_a_batch_with_nothing_behind_it_runs_wide_and_alone_and_a_backlog_runs_narrow() -> None:
    gate = threading.Event()
    wide, narrow = RecordingRunner(gate=gate), RecordingRunner()
    batcher = make_batcher(narrow, max_batch_size=1, wait="incoming", instances=2, wide_runner=wide)
    batcher.start()
    try:
        lone = asyncio.ensure_future(batcher.submit([image(1)], ["id"]))
        await wait_until(lambda: wide.in_flight.now == 1)
        backlog = [asyncio.ensure_future(batcher.submit([image(i)], ["id"])) for i in (2, 3, 4)]
        await asyncio.sleep(0.1)  # room for a collector to start a batch beside the wide one
        assert narrow.calls_started == 0, "a batch started while the wide one ran"
        gate.set()
        results = await asyncio.gather(lone, *backlog)
    finally:
        gate.set()
        await batcher.stop()
    assert [float(r[0]["id"]) for r in results] == [1.0, 2.0, 3.0, 4.0]
    assert wide.images_seen[0] == 1.0
    # 2 started with 3 and 4 queued behind it, 3 beside 2: both narrow. 4 runs wide only if 2 and 3
    # were both done when it was taken.
    assert {2.0, 3.0} <= set(narrow.images_seen)
    assert sorted(wide.images_seen + narrow.images_seen) == [1.0, 2.0, 3.0, 4.0]
    assert batcher.wide_batches_run == len(wide.batches)


async def test_incoming_policy_runs_a_lone_image_without_waiting_out_the_delay() -> None:
    runner = RecordingRunner()
    batcher = make_batcher(runner, wait="incoming", max_batch_delay_ms=60_000)
    batcher.start()
    try:
        # Under "always" this would idle for the whole minute; nothing else is on the way.
        result = await asyncio.wait_for(batcher.submit([image(1)], ["id"]), timeout=10)
    finally:
        await batcher.stop()
    assert float(result[0]["id"]) == 1.0
    assert runner.batches == [[1.0]]


async def test_incoming_policy_holds_a_queued_image_for_announced_batch_mates() -> None:
    runner = RecordingRunner()
    batcher = make_batcher(runner, wait="incoming", max_batch_delay_ms=60_000)
    batcher.start()
    try:
        with batcher.expecting(2):  # as ServiceState.preprocess does while two images decode
            first = asyncio.create_task(batcher.submit([image(1)], ["id"]))
            await wait_until(lambda: batcher.queue_depth == 1)
            await asyncio.sleep(0.1)
            assert runner.calls_started == 0  # waiting for the two announced images
        rest = asyncio.create_task(batcher.submit([image(2), image(3)], ["id"]))
        results = await asyncio.wait_for(asyncio.gather(first, rest), timeout=5)
    finally:
        await batcher.stop()
    assert [float(r["id"]) for r in results[0] + results[1]] == [1.0, 2.0, 3.0]
    assert runner.batches == [[1.0, 2.0, 3.0]]


async def test_incoming_policy_stops_waiting_at_the_delay_when_an_announced_image_never_comes() -> None:
    runner = RecordingRunner()
    batcher = make_batcher(runner, wait="incoming", max_batch_delay_ms=200)
    batcher.start()
    try:
        with batcher.expecting(1):  # e.g. an image whose decoding fails
            result = await asyncio.wait_for(batcher.submit([image(1)], ["id"]), timeout=10)
    finally:
        await batcher.stop()
    assert float(result[0]["id"]) == 1.0
    assert runner.batches == [[1.0]]


def test_expecting_refuses_a_negative_count_and_restores_the_count_on_error() -> None:
    batcher = make_batcher(RecordingRunner(), wait="incoming")
    with pytest.raises(ValueError, match="count"), batcher.expecting(-1):
        pass
    with pytest.raises(RuntimeError), batcher.expecting(3):
        raise RuntimeError("decode failed")
    assert batcher._expected == 0


async def test_multi_image_request_larger_than_max_batch_is_split_and_reassembled_in_order() -> None:
    runner = RecordingRunner()
    batcher = make_batcher(runner, max_batch_size=8)
    batcher.start()
    try:
        results = await batcher.submit([image(i) for i in range(20)], ["id"])
    finally:
        await batcher.stop()
    assert [float(r["id"]) for r in results] == [float(i) for i in range(20)]
    assert [len(b) for b in runner.batches] == [8, 8, 4]


async def test_only_the_union_of_requested_outputs_is_run() -> None:
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher = make_batcher(runner, max_batch_delay_ms=0)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit([image(0)], ["a"]))
        await wait_until(lambda: runner.calls_started == 1)
        # Queued together while the first batch blocks: they share the next batch.
        both = asyncio.gather(batcher.submit([image(1)], ["b"]), batcher.submit([image(2)], ["c"]))
        await wait_until(lambda: batcher.queue_depth == 2)
        gate.set()
        await first
        second, third = await both
    finally:
        await batcher.stop()
    assert runner.outputs_seen == [("a",), ("b", "c")]
    assert set(second[0]) == {"b"}
    assert set(third[0]) == {"c"}


async def test_full_queue_refuses_at_once_with_retry_after_and_queues_nothing() -> None:
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher = make_batcher(runner, max_queue_size=4, max_batch_delay_ms=0)
    batcher.start()
    try:
        running = asyncio.create_task(batcher.submit([image(0)], ["id"]))
        await wait_until(lambda: runner.calls_started == 1)
        queued = asyncio.create_task(batcher.submit([image(i) for i in range(1, 4)], ["id"]))
        await wait_until(lambda: batcher.queue_depth == 3)
        with pytest.raises(QueueFullError) as excinfo:
            await batcher.submit([image(9), image(10)], ["id"])
        assert excinfo.value.retry_after_s is not None and excinfo.value.retry_after_s >= 1
        assert excinfo.value.code == "queue_full"
        assert batcher.queue_depth == 3
        gate.set()
        await asyncio.gather(running, queued)
    finally:
        await batcher.stop()
    assert 9.0 not in runner.images_seen


async def test_request_waiting_past_timeout_gets_504_and_is_not_computed() -> None:
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher = make_batcher(runner, request_timeout_s=0.2, max_batch_delay_ms=0)
    batcher.start()
    try:
        running = asyncio.create_task(batcher.submit([image(0)], ["id"]))
        await wait_until(lambda: runner.calls_started == 1)
        with pytest.raises(RequestTimeoutError) as excinfo:
            await batcher.submit([image(7)], ["id"])
        assert excinfo.value.code == "timeout"
        assert batcher.queue_depth == 0
        gate.set()
        with pytest.raises(RequestTimeoutError):
            await running  # it also outlived the timeout while its batch ran
        after = await batcher.submit([image(8)], ["id"])
    finally:
        await batcher.stop()
    assert float(after[0]["id"]) == 8.0
    assert 7.0 not in runner.images_seen
    assert batcher.pending == 0


async def test_cancelled_request_leaves_no_queued_work_or_pending_future() -> None:
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher = make_batcher(runner, max_batch_delay_ms=0)
    batcher.start()
    try:
        running = asyncio.create_task(batcher.submit([image(0)], ["id"]))
        await wait_until(lambda: runner.calls_started == 1)
        abandoned = asyncio.create_task(batcher.submit([image(5), image(6)], ["id"]))
        await wait_until(lambda: batcher.queue_depth == 2)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert batcher.queue_depth == 0
        assert batcher.pending == 1
        gate.set()
        await running
        await wait_until(lambda: batcher.pending == 0)
    finally:
        await batcher.stop()
    assert runner.images_seen == [0.0]


async def test_inference_error_fails_only_its_batch_and_is_logged_once(caplog) -> None:
    gate = threading.Event()
    runner = RecordingRunner(gate=gate, fail_on=13.0)
    batcher = make_batcher(runner, max_batch_delay_ms=0)
    batcher.start()
    caplog.set_level(logging.ERROR, logger="app.batcher")
    try:
        doomed = asyncio.create_task(batcher.submit([image(13)], ["id"]))
        await wait_until(lambda: runner.calls_started == 1)
        bystander = asyncio.create_task(batcher.submit([image(3)], ["id"]))
        await wait_until(lambda: batcher.queue_depth == 1)
        gate.set()
        with pytest.raises(InferenceError) as excinfo:
            await doomed
        assert excinfo.value.code == "inference_failed"
        assert float((await bystander)[0]["id"]) == 3.0
        assert float((await batcher.submit([image(4)], ["id"]))[0]["id"]) == 4.0
    finally:
        await batcher.stop()
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert len(failures) == 1
    assert batcher.batch_failures == 1


async def test_stop_finishes_queued_work_then_refuses_new_requests() -> None:
    gate = threading.Event()
    runner = RecordingRunner(gate=gate)
    batcher = make_batcher(runner, max_batch_delay_ms=0)
    batcher.start()
    first = asyncio.create_task(batcher.submit([image(1)], ["id"]))
    await wait_until(lambda: runner.calls_started == 1)
    second = asyncio.create_task(batcher.submit([image(2)], ["id"]))
    await wait_until(lambda: batcher.queue_depth == 1)
    stopping = asyncio.create_task(batcher.stop(timeout_s=10))
    await asyncio.sleep(0.01)
    with pytest.raises(NotReadyError):
        await batcher.submit([image(3)], ["id"])
    gate.set()
    await stopping
    assert float((await first)[0]["id"]) == 1.0
    assert float((await second)[0]["id"]) == 2.0
    assert not batcher.running
