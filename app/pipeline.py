"""The one way a request goes, whatever its transport: admitted (ready, within the memory budget),
its bytes read within limits, its images decoded in the pool, submitted to the batcher and waited for
(deadline, client gone, cancellation), its results handed back.

Transports (the REST routes, /v2 over HTTP, /v2 over gRPC) only translate their wire format in and out:

    async with pipeline.job() as job:            # readiness; releases what the job reserved
        job.reserve(len(chunk))                  # while reading: the shared memory budget
        results = await job.run_encoded(blobs, ["logits"], client_gone=watch)

Limits, readiness and the errors raised (`app.errors`) are written here once; each transport maps
the errors to its wire form.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from app.batching import Batcher, ImageResult
from app.errors import (
    ClientDisconnectedError,
    OverloadedError,
    PayloadTooLargeError,
    TooManyImagesError,
)
from app.imaging import DecodePool, ImagePreprocessor
from app.metrics import ServiceMetrics
from app.readiness import Readiness
from app.settings import Settings
from app.statistics import RequestTiming

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Framing allowed per image on top of the image itself (multipart boundary and part headers, a v2
#: BYTES element's length and its JSON description).
PART_OVERHEAD_BYTES = 4096
#: Room for a request's own framing on top of its images (multipart preamble, a v2 JSON header).
REQUEST_OVERHEAD_BYTES = 64 * 1024
#: Bytes per tensor element a v2 JSON body may spend ("-0.0123456789012345678," and nesting).
JSON_BYTES_PER_ELEMENT = 28

#: Values above which a JSON body is parsed or encoded in a worker thread: 191 MB of /features JSON
#: took 9 s on the event loop, during which /healthz waited. Small bodies are cheaper inline.
OFF_LOOP_BYTES = 256 * 1024

#: Resolves when the client has gone (an HTTP disconnect); None where cancellation says it (gRPC).
ClientGone = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Limits:
    """What one request may carry, from the settings and the model's input size."""

    max_image_bytes: int
    max_image_pixels: int
    max_images_per_request: int
    max_inflight_bytes: int
    #: float32 values in one preprocessed image (3 x S x S).
    image_elements: int
    #: Longest pause between two pieces of a request body.
    body_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, image_size: int) -> Limits:
        return cls(
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_images_per_request=settings.max_images_per_request,
            max_inflight_bytes=settings.max_inflight_bytes,
            image_elements=3 * image_size**2,
            body_timeout_s=settings.body_timeout_s,
        )

    @property
    def image_tensor_bytes(self) -> int:
        return 4 * self.image_elements

    @property
    def max_request_bytes(self) -> int:
        """Largest request body, for every route: each image at its limit (an encoded file, or a
        preprocessed tensor written as JSON) plus framing, never above the memory budget."""
        per_image = max(self.max_image_bytes, self.image_elements * JSON_BYTES_PER_ELEMENT)
        largest = self.max_images_per_request * (per_image + PART_OVERHEAD_BYTES) + REQUEST_OVERHEAD_BYTES
        return min(largest, self.max_inflight_bytes)

    def check_image_count(self, count: int, what: str = "the request") -> None:
        if count > self.max_images_per_request:
            raise TooManyImagesError(
                f"{what} holds {count} images; at most {self.max_images_per_request} images per request "
                "(TRANSXNET_MAX_IMAGES_PER_REQUEST): split it"
            )

    def check_image_bytes(self, size: int, what: str = "the image") -> None:
        if size > self.max_image_bytes:
            raise PayloadTooLargeError(
                f"{what} is {size} bytes; the limit is {self.max_image_bytes} (TRANSXNET_MAX_IMAGE_BYTES)"
            )

    def check_request_bytes(self, size: int, what: str = "the request") -> None:
        limit = self.max_request_bytes
        if size > limit:
            raise PayloadTooLargeError(
                f"{what} is {size} bytes; at most {limit} bytes are accepted per request (at most "
                f"{self.max_images_per_request} images of {self.max_image_bytes} bytes, within the "
                f"{self.max_inflight_bytes}-byte memory budget, TRANSXNET_MAX_INFLIGHT_BYTES)"
            )


class ByteBudget:
    """Request bytes held in memory across all requests at once: bodies being read, decodes running,
    decoded images waiting for their batch, parsed JSON. Beyond it a request is refused with 503
    instead of growing the process until the kernel kills it. Thread-safe: decode threads reserve
    too."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"the budget must be positive, got {limit}")
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def try_reserve(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.held -= size


class Job:
    """One request's way through the pipeline. Made by `Pipeline.job()`, which releases everything
    the job reserved when the request ends, however it ends."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self.limits = pipeline.limits
        self.reserved = 0
        self.images = 0
        self.timing = RequestTiming()
        self.started = time.perf_counter()
        self._ran_at: float | None = None

    def finish(self, *, ok: bool) -> None:
        """Count the request in the model statistics; what ran after the results is output time."""
        now = time.perf_counter()
        if self._ran_at is not None:
            self.timing.output_s = now - self._ran_at
        self._pipeline.metrics.statistics.request_done(
            ok=ok, seconds=now - self.started, timing=self.timing, images=self.images
        )

    def reserve(self, size: int) -> None:
        """Charge `size` bytes to the memory budget until the job ends; `OverloadedError` (503,
        retry later) when the budget has no room."""
        if size <= 0:
            return
        if size > self._pipeline.budget.limit:
            raise PayloadTooLargeError(
                f"this request needs {self.reserved + size} bytes in memory, more than the whole "
                f"{self._pipeline.budget.limit}-byte budget (TRANSXNET_MAX_INFLIGHT_BYTES): send fewer "
                "images per request, or tensors as binary data rather than JSON"
            )
        if not self._pipeline.budget.try_reserve(size):
            self._pipeline.metrics.overloaded.inc()
            raise OverloadedError(
                f"the service holds {self._pipeline.budget.held} bytes of requests in memory; "
                f"{size} more would pass its {self._pipeline.budget.limit}-byte budget: retry shortly",
                retry_after_s=1,
            )
        self.reserved += size

    def release(self, size: int) -> None:
        """Give back part of what this job reserved, once that memory is freed."""
        size = min(size, self.reserved)
        self._pipeline.budget.release(size)
        self.reserved -= size

    async def run_encoded(
        self, blobs: Sequence[bytes], outputs: Sequence[str], *, client_gone: ClientGone | None = None
    ) -> list[ImageResult]:
        """Decode `blobs` in the pool and run them; results in request order."""
        self.limits.check_image_count(len(blobs))
        for index, blob in enumerate(blobs):
            self.limits.check_image_bytes(len(blob), f"image {index}" if len(blobs) > 1 else "the image")
        self.images = len(blobs)
        return await self._watched(self._decode_and_run(blobs, outputs), client_gone)

    async def run_tensors(
        self, images: Sequence[np.ndarray], outputs: Sequence[str], *, client_gone: ClientGone | None = None
    ) -> list[ImageResult]:
        """Run already-preprocessed `[3, S, S]` float32 images; results in request order."""
        self.limits.check_image_count(len(images))
        self.images = len(images)
        submitted = self._pipeline.batcher.submit(images, outputs, self.timing)
        return await self._watched(submitted, client_gone)

    async def _decode_and_run(self, blobs: Sequence[bytes], outputs: Sequence[str]) -> list[ImageResult]:
        pipeline = self._pipeline
        # The decoded inputs wait in memory for their batch: charged before decoding starts.
        self.reserve(len(blobs) * self.limits.image_tensor_bytes)
        started = time.perf_counter()
        images = await pipeline.decode(blobs)
        self.timing.input_s = time.perf_counter() - started
        return await pipeline.batcher.submit(images, outputs, self.timing)

    async def _watched(
        self, work: Awaitable[list[ImageResult]], client_gone: ClientGone | None
    ) -> list[ImageResult]:
        results = await self._until_gone(work, client_gone)
        self._ran_at = time.perf_counter()
        return results

    async def _until_gone(
        self, work: Awaitable[list[ImageResult]], client_gone: ClientGone | None
    ) -> list[ImageResult]:
        """Await `work` unless the client goes first; then cancel it, so that its queued decodes and
        images are dropped, never computed."""
        task = asyncio.ensure_future(work)
        if client_gone is None:
            return await task
        gone = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            logger.info("client disconnected: %d image(s) dropped", self.images)
            raise ClientDisconnectedError("the client disconnected before its images ran")
        return task.result()


class Pipeline:
    """Limits, readiness, the memory budget, decoding and the batcher, for every transport."""

    def __init__(
        self,
        *,
        limits: Limits,
        readiness: Readiness,
        preprocessor: ImagePreprocessor,
        pool: DecodePool,
        batcher: Batcher,
        metrics: ServiceMetrics,
        budget: ByteBudget | None = None,
    ) -> None:
        self.limits = limits
        self.readiness = readiness
        self.preprocessor = preprocessor
        self.pool = pool
        self.batcher = batcher
        self.metrics = metrics
        #: Shared with the decoder, which charges each decode's peak memory while it runs.
        self.budget = budget or ByteBudget(limits.max_inflight_bytes)

    @contextlib.asynccontextmanager
    async def job(self) -> AsyncIterator[Job]:
        """Admit a request (`NotReadyError` unless the service accepts work) and release what it
        reserved when it ends, however it ends (a transport's cancellation included: gRPC cancels
        the handler when the client's deadline passes or it cancels)."""
        self.readiness.check_accepting()
        job = Job(self)
        ok = False
        try:
            yield job
            ok = True
        finally:
            self.budget.release(job.reserved)
            if job.images:  # a request refused before it named its images is no inference request
                job.finish(ok=ok)

    async def decode(self, blobs: Sequence[bytes]) -> list[np.ndarray]:
        """Decode every image of a request in the pool; the first failure (in request order) fails
        the whole request before any of its images is queued. Cancelling drops the decodes that have
        not started (a client that has gone costs no more decoding)."""
        loop = asyncio.get_running_loop()
        # A request keeps at most one decode per thread in the pool's queue, so a 32-image request
        # cannot put every other request's images behind its own: the queue interleaves requests.
        slots = asyncio.Semaphore(self.pool.workers)

        async def decode_one(blob: bytes) -> np.ndarray:
            async with slots:
                # In a copy of this request's context, so what decoding logs carries its request ID.
                context = contextvars.copy_context()
                return await loop.run_in_executor(self.pool, context.run, self._decode_one, blob)

        # Announced to the batcher, which may hold a queued image back for these batch-mates.
        with self.batcher.expecting(len(blobs)):
            tasks = [asyncio.ensure_future(decode_one(blob)) for blob in blobs]
            try:
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            except asyncio.CancelledError:
                for task in tasks:
                    task.cancel()
                raise
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def _decode_one(self, blob: bytes) -> np.ndarray:
        """One image in a pool thread, timed: what decoding costs under the real load is visible."""
        started = time.perf_counter()
        image = self.preprocessor(blob)
        self.metrics.preprocess_seconds.observe(time.perf_counter() - started)
        return image


async def off_loop(size: int, function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in a worker thread when `size` (bytes or values it handles) is large, so
    that one request's JSON never stalls the probes and the other requests; inline otherwise."""
    if size < OFF_LOOP_BYTES:
        return function(*args)
    return await asyncio.to_thread(function, *args)
