"""The service, built whole by `build_service(settings)`: model session(s), runner, decode pool,
preprocessor, batcher, readiness, metrics and the request pipeline. Transports are handed a complete
object; their lifespan only starts and stops it.

Start-up happens in two steps so a long warm-up (a TensorRT engine build can take minutes) never
looks like a dead process: building opens the session and reads the model's metadata (a broken file
stops start-up at once), then `start()` warms up at the max batch size in the background while
liveness answers 200 and readiness 503; readiness turns 200 when warm-up is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.batching import Batcher, ModelRunner
from app.imaging import DecodePool, ImagePreprocessor
from app.metrics import ServiceMetrics
from app.pipeline import ByteBudget, Limits, Pipeline
from app.readiness import Readiness
from app.runner import OnnxRunner
from app.settings import ENV_PREFIX, Settings, check_model_file
from runtime.metadata import OUTPUT_NAMES, ModelMetadata
from runtime.session import LoadedSession, create_session, read_metadata

logger = logging.getLogger(__name__)

#: `runner` for `build_service`: a runner used instead of the ONNX one, or a function that wraps it.
RunnerOverride = ModelRunner | Callable[[OnnxRunner], ModelRunner]


@dataclass
class Service:
    """Everything a transport needs, complete from construction on."""

    settings: Settings
    model_path: Path
    metrics: ServiceMetrics
    readiness: Readiness
    loaded: LoadedSession
    metadata: ModelMetadata
    #: Declared output shapes (batch axis symbolic).
    output_shapes: dict[str, list[int | str | None]]
    pool: DecodePool
    preprocessor: ImagePreprocessor
    batcher: Batcher
    pipeline: Pipeline
    #: Intra-op threads of the all-cores session for lone batches (several CPU instances); 0: none.
    lone_batch_threads: int = 0
    _warm_up: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def model_names(self) -> tuple[str, ...]:
        """The names clients may use: the variant, and as an alias the ONNX file's stem."""
        return tuple(dict.fromkeys((self.metadata.variant, self.model_path.stem)))

    async def start(self) -> None:
        """Start batching and warm up in the background; readiness turns 200 when that is done."""
        self.metrics.track_queue_depth(lambda: self.batcher.queue_depth)
        self.batcher.start()
        self._warm_up = asyncio.create_task(self._warm(), name="warm-up")

    async def stop(self) -> None:
        """Refuse new work, let queued work finish (up to `shutdown_timeout_s`), release threads."""
        self.readiness.begin_draining()
        if self._warm_up is not None:
            self._warm_up.cancel()
        await self.batcher.stop(self.settings.shutdown_timeout_s)
        self.pool.shutdown(wait=False, cancel_futures=True)
        logger.info("stopped")

    async def _warm(self) -> None:
        """One batch of max_batch_size with every output, on each session: allocations, cuDNN
        algorithm search and the TensorRT engine are paid here, not by the first users."""
        size = self.metadata.image_size
        batch = np.zeros((self.settings.max_batch_size, 3, size, size), dtype=np.float32)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.batcher.run_direct, batch, OUTPUT_NAMES)
            if self.batcher.wide_runner is not None:
                await asyncio.to_thread(self.batcher.wide_runner.run, batch, OUTPUT_NAMES)
        except Exception as exc:
            self.readiness.fail(f"warm-up failed: {type(exc).__name__}: {exc}")
            logger.exception("warm-up failed; the service stays not-ready and liveness reports 500")
            return
        self.readiness.mark_ready()
        logger.info(
            "ready: warmed up at batch %d in %.2f s on %s",
            self.settings.max_batch_size,
            time.perf_counter() - started,
            list(self.loaded.providers),
        )


def _build_runner(onnx_runner: OnnxRunner, override: RunnerOverride | None) -> ModelRunner:
    if override is None:
        return onnx_runner
    # An instance with run() replaces the ONNX runner; a class or function wraps it.
    if isinstance(override, ModelRunner) and not isinstance(override, type):
        logger.warning("using an injected model runner (%s)", type(override).__name__)
        return override
    if not callable(override):
        raise TypeError(f"runner must be a ModelRunner or a function of the ONNX runner, got {override!r}")
    runner = override(onnx_runner)
    logger.warning("wrapping the ONNX runner in %s", type(runner).__name__)
    return runner


def _open_session(settings: Settings, path: Path) -> LoadedSession:
    loaded = create_session(
        path,
        providers=settings.providers,
        intra_op_threads=settings.resolved_intra_op_threads,
        max_batch_size=settings.max_batch_size,
        trt_fp16=settings.trt_fp16,
        trt_cache_dir=settings.trt_cache_dir,
        # Several instances may mean a second session (below): let the two share one arena.
        shared_arena=settings.model_instances > 1,
    )
    if settings.oversubscribed:
        logger.warning(
            "%d model instances x %d intra-op threads exceed the %d usable cores: concurrent runs "
            "will preempt each other; set %sINTRA_OP_THREADS=0 to divide the cores",
            settings.model_instances,
            settings.resolved_intra_op_threads,
            settings.cores,
            ENV_PREFIX,
        )
    return loaded


def _wide_runner(
    settings: Settings, path: Path, threads: int, override: RunnerOverride | None
) -> ModelRunner | None:
    """The all-cores session that runs a batch with nothing else running, queued or decoding."""
    if not threads:
        return None
    wide = create_session(
        path,
        providers="cpu",
        intra_op_threads=threads,
        max_batch_size=settings.max_batch_size,
        shared_arena=True,
    )
    logger.info("a batch that would run alone uses a second session with %d intra-op threads", threads)
    return _build_runner(OnnxRunner(wide), override)


def build_service(
    settings: Settings, *, runner: RunnerOverride | None = None, split_resize: bool = True
) -> Service:
    """Build the whole service (no event loop needed). `runner` replaces the ONNX runner (tests: slow
    or failing runners) or, if it is a function, wraps it; the model file is loaded either way for its
    metadata. `split_resize=False` keeps every resize on one thread (benchmarks' A/B runs)."""
    path = check_model_file(settings)
    metrics = ServiceMetrics(max_batch_size=settings.max_batch_size)
    loaded = _open_session(settings, path)
    metadata = read_metadata(loaded.session)
    onnx_runner = OnnxRunner(loaded)
    lone_batch_threads = settings.lone_batch_threads(cpu_only=loaded.providers == ("CPUExecutionProvider",))
    workers = settings.resolved_preprocess_workers
    pool = DecodePool(workers, thread_name_prefix="preprocess")
    budget = ByteBudget(settings.max_inflight_bytes)
    preprocessor = ImagePreprocessor(
        metadata,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        jpeg_reducing_gap=settings.jpeg_reducing_gap,
        # Half of a large resize goes to another decode thread when one is idle (none with one).
        offload=pool.submit_if_idle if split_resize and workers > 1 else None,
        memory=budget,
    )
    if settings.jpeg_reducing_gap:
        logger.info(
            "JPEG_REDUCING_GAP=%g: large JPEGs are decoded at reduced scale, so preprocessing is "
            "close to but not pixel-exact with timm's eval transform",
            settings.jpeg_reducing_gap,
        )
    batcher = Batcher(
        _build_runner(onnx_runner, runner),
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        wait=settings.batch_wait,
        instances=settings.model_instances,
        wide_runner=_wide_runner(settings, path, lone_batch_threads, runner),
        max_queue_size=settings.max_queue_size,
        request_timeout_s=settings.request_timeout_s,
        observer=metrics,
    )
    readiness = Readiness(metrics.ready)
    pipeline = Pipeline(
        limits=Limits.from_settings(settings, metadata.image_size),
        readiness=readiness,
        preprocessor=preprocessor,
        pool=pool,
        batcher=batcher,
        metrics=metrics,
        budget=budget,
    )
    logger.info(
        "serving %s (%s) from %s with %d model instance(s), %s intra-op thread(s) each",
        metadata.variant,
        metadata.weights,
        path,
        settings.model_instances,
        settings.resolved_intra_op_threads or "ONNX Runtime's default",
    )
    return Service(
        settings=settings,
        model_path=path,
        metrics=metrics,
        readiness=readiness,
        loaded=loaded,
        metadata=metadata,
        output_shapes=onnx_runner.output_shapes(),
        pool=pool,
        preprocessor=preprocessor,
        batcher=batcher,
        pipeline=pipeline,
        lone_batch_threads=lone_batch_threads,
    )
