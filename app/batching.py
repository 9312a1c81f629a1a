"""Dynamic batching: many concurrent requests, one model, `instances` batches at a time (default 1).

Requests arrive already preprocessed and are queued as per-image items. A collector task takes the
oldest item, waits until the batch is full (`max_batch_size` images) or `max_batch_delay_ms` have
passed since that item arrived, and runs the batch in a worker thread, so the event loop keeps
answering (health checks, uploads, preprocessing hand-offs) while ONNX Runtime computes.

What the collector waits for is the `wait` policy. "always" waits the full delay for batch-mates
(Triton's `max_queue_delay`). "incoming" (the default) waits only while images announced with
`expecting()` are still being decoded: at low load nobody is on the way, so a lone image runs at
once instead of idling for the delay, and under load the decoding requests still join the batch.
Batches also form without any wait, from what queued up while the previous batch ran. Results go
back to each request's future and a request split over several batches is reassembled in order.
The loop follows LitServe's (monotonic deadline, collect until full or late, run, hand back).

With `instances` > 1 (Triton's instance count) that many collectors take batches from the one queue
and run them at the same time, each in its own thread. On CPU that pays when each run has fewer
intra-op threads: two one-thread runs keep both cores busy, where the two threads of one run wait
for each other whenever decoding preempts one of them. It costs a lone request, though, which then
runs on one thread. So a `wide_runner` (the same model with every core) may be given: a batch that
would run alone, with nothing queued or being decoded behind it, runs there, and no other batch
starts until it is done.

Failure stays local: a full queue refuses a request at once (503), a request that waited past
`request_timeout_s` gets 504 and its queued images are never computed, a cancelled request (client
gone) leaves nothing queued, and an inference error fails only the requests in that batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args, runtime_checkable

import numpy as np

from app.errors import InferenceError, NotReadyError, QueueFullError, RequestTimeoutError
from app.logging_setup import current_request_id
from app.statistics import RequestTiming

logger = logging.getLogger(__name__)

#: One image's outputs: output name -> array without the batch axis.
ImageResult = dict[str, np.ndarray]

#: What the first queued image waits for (see the module docstring).
BatchWait = Literal["incoming", "always"]
BATCH_WAITS: tuple[str, ...] = get_args(BatchWait)


@runtime_checkable
class ModelRunner(Protocol):
    """Runs one batch `[N, 3, S, S]` and returns the requested outputs, each with batch axis N."""

    def run(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]: ...


class BatchObserver(Protocol):
    """Where the batcher reports what it did (the Prometheus metrics implement this)."""

    def batch_done(self, size: int, input_s: float, infer_s: float, output_s: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def request_timed_out(self) -> None: ...


@dataclass(eq=False)
class _Request:
    future: asyncio.Future[list[ImageResult]]
    outputs: frozenset[str]
    deadline: float
    results: list[ImageResult | None]
    remaining: int
    request_id: str | None = None  # the HTTP request's ID, for logs about its batch
    timing: RequestTiming | None = None  # filled in for the caller's statistics
    enqueued: float = 0.0

    @property
    def live(self) -> bool:
        return not self.future.done()


@dataclass(eq=False)
class _Item:
    request: _Request
    index: int
    image: np.ndarray
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Queue + collectors + one inference thread per instance. Create, `start()` inside the event
    loop, then `submit()` from request handlers; `stop()` drains what is queued and releases the
    threads."""

    def __init__(
        self,
        runner: ModelRunner,
        *,
        max_batch_size: int,
        max_batch_delay_ms: float,
        max_queue_size: int,
        request_timeout_s: float,
        wait: BatchWait = "incoming",
        instances: int = 1,
        wide_runner: ModelRunner | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        if not isinstance(runner, ModelRunner):
            raise ValueError(f"runner must have a run(batch, outputs) method, got {type(runner).__name__}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not 0 <= max_batch_delay_ms < math.inf:
            raise ValueError(f"max_batch_delay_ms must be a finite number >= 0, got {max_batch_delay_ms}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1 image, got {max_queue_size}")
        if not 0 < request_timeout_s < math.inf:
            raise ValueError(f"request_timeout_s must be a finite number > 0, got {request_timeout_s}")
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        if wide_runner is not None and not isinstance(wide_runner, ModelRunner):
            raise ValueError(f"wide_runner must have a run(batch, outputs) method, got {wide_runner!r}")
        if wait not in BATCH_WAITS:
            raise ValueError(f"wait must be one of {BATCH_WAITS}, got {wait!r}")
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.request_timeout_s = request_timeout_s
        self.wait = wait
        self.instances = instances
        self.wide_runner = wide_runner
        self._observer = observer
        self._expected = 0  # images announced by expecting() and not yet submitted or abandoned
        self._queue: deque[_Item] = deque()
        self._requests: set[_Request] = set()
        self._arrived = asyncio.Event()
        self._collectors: list[asyncio.Task[None]] = []
        self._in_flight = 0  # batches running now
        self._wide_done = asyncio.Event()  # clear while a wide batch runs: nothing else may start
        self._wide_done.set()
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        # Counters for metrics and tests.
        self.batches_run = 0
        self.wide_batches_run = 0
        self.images_run = 0
        self.batch_failures = 0

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch (not counting the batches being computed)."""
        return len(self._queue)

    @property
    def pending(self) -> int:
        """Requests submitted and not yet answered (queued or in a running batch)."""
        return len(self._requests)

    @property
    def running(self) -> bool:
        return any(not collector.done() for collector in self._collectors)

    def start(self) -> None:
        """Start the collectors; must be called from the event loop that will call `submit`."""
        if self.running:
            raise RuntimeError("the batcher is already running")
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix="inference")
        self._collectors = [
            loop.create_task(self._collect(), name=f"batch-collector-{i}") for i in range(self.instances)
        ]
        self._accepting = True

    @contextlib.contextmanager
    def expecting(self, count: int) -> Iterator[None]:
        """Announce `count` images that are being prepared for `submit` (decoding), for the duration
        of the block. Under the "incoming" policy the collector waits for them, and only for them.

        Call it from the event loop's thread, around the preprocessing that precedes `submit`.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._expected += count
        try:
            yield
        finally:
            self._expected -= count

    def run_direct(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the model synchronously, bypassing the queue (warm-up before the service is ready)."""
        return self.runner.run(batch, outputs)

    async def submit(
        self, images: Sequence[np.ndarray], outputs: Sequence[str], timing: RequestTiming | None = None
    ) -> list[ImageResult]:
        """Queue a request's images and wait for their outputs, in the order given. `timing`, if
        given, receives the time the request spent queued and in the model.

        Raises `QueueFullError` (no room for all of them: nothing is queued), `RequestTimeoutError`
        (waited past `request_timeout_s`), `InferenceError` (the batch failed) or `NotReadyError`
        (stopping). Cancelling the caller removes its queued images.
        """
        if not self._accepting or not self.running:
            raise NotReadyError("the service is not accepting work (starting up or shutting down)")
        if not images:
            return []
        count = len(images)
        if len(self._queue) + count > self.max_queue_size:
            raise QueueFullError(
                f"the queue is full ({len(self._queue)} of {self.max_queue_size} images waiting); "
                "retry after a short pause",
                retry_after_s=1,
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        request = _Request(
            future=loop.create_future(),
            outputs=frozenset(outputs),
            deadline=now + self.request_timeout_s,
            results=[None] * count,
            remaining=count,
            request_id=current_request_id.get(),
            timing=timing,
            enqueued=now,
        )
        self._requests.add(request)
        self._queue.extend(_Item(request, i, image, now) for i, image in enumerate(images))
        self._arrived.set()
        try:
            # shield: a timeout must not cancel the future under the collector's feet; we settle it.
            return await asyncio.wait_for(asyncio.shield(request.future), self.request_timeout_s)
        except asyncio.TimeoutError:
            self._fail(request, self._timeout_error())
            raise self._timeout_error() from None
        finally:
            if not request.future.done():
                request.future.cancel()  # the caller went away (cancelled): abandon the work
            self._forget(request)

    def _timeout_error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the request waited more than {self.request_timeout_s:g} s for the model; the service "
            "is overloaded, retry later"
        )

    def _fail(self, request: _Request, error: Exception) -> None:
        if request.live:
            request.future.set_exception(error)
            # Mark it retrieved: the submitter may already be gone, and asyncio would warn.
            request.future.exception()
            if isinstance(error, RequestTimeoutError) and self._observer is not None:
                self._observer.request_timed_out()

    def _forget(self, request: _Request) -> None:
        """Drop a settled request and its queued images so nothing outlives the caller."""
        self._requests.discard(request)
        if any(item.request is request for item in self._queue):
            self._queue = deque(item for item in self._queue if item.request is not request)

    def _take_batch(self) -> list[_Item]:
        """Pop up to `max_batch_size` live items, dropping those of settled or expired requests."""
        batch: list[_Item] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if not item.request.live:
                continue
            if now > item.request.deadline:
                self._fail(item.request, self._timeout_error())
                continue
            batch.append(item)
        return batch

    async def _wait_for_batch(self) -> None:
        """Block until there is work, then until the batch is full or the oldest item is late."""
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._queue[0].enqueued + self.max_batch_delay_s
        while len(self._queue) < self.max_batch_size:
            if self.wait == "incoming" and self._expected == 0:
                break  # no batch-mate is on the way: waiting would only add latency
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _runs_wide(self) -> bool:
        """Whether the batch just taken would run alone: nothing running, queued or being decoded."""
        if self.wide_runner is None or self._in_flight:
            return False
        return not self._queue and self._expected == 0

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wide_done.wait()
            await self._wait_for_batch()
            await self._wide_done.wait()  # a wide batch may have started while this one formed
            items = self._take_batch()
            if not items:
                continue
            wide = self._runs_wide()
            runner = self.wide_runner if wide else self.runner
            assert runner is not None
            outputs = sorted(set().union(*(item.request.outputs for item in items)))
            started = time.monotonic()
            if self._observer is not None:
                for item in items:
                    self._observer.queue_wait(started - item.enqueued)
            self._in_flight += 1
            if wide:
                self._wide_done.clear()
            try:
                assert self._executor is not None
                values, stack_s, infer_s = await loop.run_in_executor(
                    self._executor, self._run_batch, runner, [item.image for item in items], outputs
                )
            except asyncio.CancelledError:
                for item in items:
                    self._fail(item.request, NotReadyError("the service stopped before this request ran"))
                raise
            except Exception as exc:
                self.batch_failures += 1
                request_ids = dict.fromkeys(item.request.request_id or "-" for item in items)
                logger.exception(
                    "inference failed on a batch of %d images (request ids: %s)",
                    len(items),
                    ", ".join(request_ids),
                )
                error = InferenceError(
                    f"inference failed on this request's batch ({type(exc).__name__}); the request can "
                    "be retried"
                )
                for item in items:
                    self._fail(item.request, error)
                continue
            finally:
                self._in_flight -= 1
                if wide:
                    self._wide_done.set()
            handed_back = time.monotonic()
            self.batches_run += 1
            self.wide_batches_run += wide
            self.images_run += len(items)
            self._hand_back(items, values, infer_s)
            if self._observer is not None:
                self._observer.batch_done(len(items), stack_s, infer_s, time.monotonic() - handed_back)

    def _run_batch(
        self, runner: ModelRunner, images: list[np.ndarray], outputs: list[str]
    ) -> tuple[dict[str, np.ndarray], float, float]:
        """(outputs, seconds stacking the inputs, seconds in the model), in an inference thread:
        stacking ~10 MB here keeps the event loop free."""
        started = time.perf_counter()
        batch = np.stack(images)
        stacked = time.perf_counter()
        values = runner.run(batch, outputs)
        ran = time.perf_counter()
        missing = [name for name in outputs if name not in values]
        if missing:
            raise RuntimeError(f"the runner did not return {missing}")
        for name in outputs:
            if values[name].shape[0] != len(images):
                raise RuntimeError(
                    f"output {name!r} has batch size {values[name].shape[0]} for {len(images)} images"
                )
        return values, stacked - started, ran - stacked

    def _hand_back(self, items: list[_Item], values: dict[str, np.ndarray], infer_s: float) -> None:
        now = time.monotonic()
        timed: set[_Request] = set()
        for row, item in enumerate(items):
            request = item.request
            if not request.live:
                continue  # timed out or cancelled while its batch ran: discard
            request.results[item.index] = {name: values[name][row] for name in request.outputs}
            request.remaining -= 1
            if request.timing is not None and request not in timed:
                timed.add(request)
                request.timing.infer_s += infer_s
            if request.remaining == 0:
                if request.timing is not None:
                    # Queued is whatever of its time in the batcher was not spent in the model.
                    request.timing.queue_s = max(0.0, now - request.enqueued - request.timing.infer_s)
                request.future.set_result(request.results)  # type: ignore[arg-type]

    def stop_accepting(self) -> None:
        """Refuse new submissions (NotReadyError); queued and running work still completes."""
        self._accepting = False

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted request is answered; False if `timeout_s` ran out first."""
        deadline = time.monotonic() + timeout_s
        while self._requests:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let queued work finish (up to `timeout_s`), then end the collectors."""
        self.stop_accepting()
        if not await self.drain(timeout_s):
            logger.warning(
                "stopping with %d requests unanswered after %.1f s; they get 503", self.pending, timeout_s
            )
        for collector in self._collectors:
            collector.cancel()
        for collector in self._collectors:
            with contextlib.suppress(asyncio.CancelledError):
                await collector
        for request in list(self._requests):
            self._fail(request, NotReadyError("the service stopped before this request ran"))
        self._queue.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
