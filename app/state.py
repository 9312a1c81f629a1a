"""What the running service holds (settings, model, batcher, readiness) and the dependencies that
hand it to route handlers."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from app.batcher import Batcher, ImageResult
from app.errors import ClientDisconnectedError, NotReadyError
from app.metrics import ServiceMetrics
from app.imaging import DecodePool, ImagePreprocessor
from app.settings import Settings
from runtime.metadata import ModelMetadata
from runtime.session import LoadedSession

logger = logging.getLogger(__name__)


@dataclass
class ServiceState:
    """One per app. `ready` turns true after warm-up; `draining` from SIGTERM on (never back)."""

    settings: Settings
    metrics: ServiceMetrics
    loaded: LoadedSession | None = None
    metadata: ModelMetadata | None = None
    output_shapes: dict[str, list[int | str | None]] = field(default_factory=dict)
    batcher: Batcher | None = None
    preprocessor: ImagePreprocessor | None = None
    pool: DecodePool | None = None
    #: Intra-op threads of the all-cores session for lone batches (several CPU instances); 0: none.
    lone_batch_threads: int = 0
    ready: bool = False
    draining: bool = False
    startup_error: str | None = None

    @property
    def accepting(self) -> bool:
        return self.ready and not self.draining

    def mark_ready(self) -> None:
        self.ready = True
        self.metrics.ready.set(0 if self.draining else 1)

    def begin_draining(self) -> None:
        """Refuse new work from now on (readiness 503); safe to call from a signal handler."""
        if not self.draining:
            self.draining = True
            self.metrics.ready.set(0)
            logger.info("draining: readiness is now 503 and new requests are refused")

    async def preprocess(self, blobs: Sequence[bytes]) -> list[np.ndarray]:
        """Decode every image of a request in the preprocessing pool; the first failure (in request
        order) fails the whole request before any of its images is queued."""
        assert self.pool is not None and self.preprocessor is not None and self.batcher is not None
        loop = asyncio.get_running_loop()
        # Announced to the batcher, which may hold a queued image back for these batch-mates. Each
        # decode runs in a copy of this request's context, so what it logs carries the request's ID.
        with self.batcher.expecting(len(blobs)):
            outcomes = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        self.pool, contextvars.copy_context().run, self._preprocess_one, blob
                    )
                    for blob in blobs
                ),
                return_exceptions=True,
            )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def _preprocess_one(self, blob: bytes) -> np.ndarray:
        """One image in a pool thread, timed: what decoding costs under the real load is visible."""
        assert self.preprocessor is not None
        started = time.perf_counter()
        image = self.preprocessor(blob)
        self.metrics.preprocess_seconds.observe(time.perf_counter() - started)
        return image

    async def infer(
        self, request: Request, images: Sequence[np.ndarray], outputs: Sequence[str]
    ) -> list[ImageResult]:
        """Run a request's images through the batcher unless its client disconnects first.

        uvicorn does not cancel a handler whose client went away, so the batcher's own cancellation
        path (which drops queued images) needs this watch on the ASGI channel: the queued images of
        an abandoned request are then never computed.
        """
        assert self.batcher is not None
        work = asyncio.ensure_future(self.batcher.submit(images, outputs))
        gone = asyncio.ensure_future(_client_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            logger.info("client disconnected: %d queued image(s) dropped", len(images))
            raise ClientDisconnectedError("the client disconnected before its images ran")
        return work.result()


async def _client_disconnected(request: Request) -> None:
    """Return once the ASGI server reports `http.disconnect` (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# Both dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in anyio's worker threads, which would put a thread hop in front of every request and
# make /readyz wait whenever that pool is busy.


async def get_service(request: Request) -> ServiceState:
    return request.app.state.service


async def get_ready_service(request: Request) -> ServiceState:
    """The service, if it accepts work; otherwise 503 not_ready (warming up or shutting down)."""
    service: ServiceState = request.app.state.service
    if not service.accepting:
        reason = "shutting down" if service.draining else "warming up"
        raise NotReadyError(f"the service is {reason}; retry on another replica or in a moment")
    return service


Service = Annotated[ServiceState, Depends(get_service)]
ReadyService = Annotated[ServiceState, Depends(get_ready_service)]
