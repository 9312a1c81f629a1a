"""The FastAPI application: `create_app()` wires settings, model, batcher, routes and error mapping.

Start-up happens in two steps so a long warm-up (a TensorRT engine build can take minutes) never
looks like a dead process: the lifespan opens the session and reads the model's metadata (a broken
file stops start-up at once), then warms up at the max batch size in the background while /healthz
answers 200 and /readyz 503; /readyz turns 200 when warm-up is done.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import v2_protocol
from app.batcher import Batcher, ModelRunner
from app.errors import ServiceError
from app.http import demo, docs_ui
from app.logging_setup import current_request_id
from app.metrics import ServiceMetrics
from app.imaging import DecodePool, ImagePreprocessor
from app.routes import health, inference, v2
from app.routes import metrics as metrics_route
from app.runner import OnnxRunner
from app.settings import Settings, check_model_file, load_settings
from app.state import ServiceState
from runtime.metadata import OUTPUT_NAMES
from runtime.session import create_session, read_metadata

logger = logging.getLogger(__name__)

#: `runner` for `create_app`: a runner used instead of the ONNX one, or a function that wraps it.
RunnerOverride = ModelRunner | Callable[[OnnxRunner], ModelRunner]


def _error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _error_response(
    request: Request, code: str, message: str, status_code: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The house error shape, except under /v2 where the Open Inference Protocol's `{"error": "..."}`
    and Triton's status codes apply (tritonclient reads exactly that)."""
    if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
        return JSONResponse(
            {"error": message}, status_code=v2_protocol.protocol_status(status_code), headers=headers
        )
    return JSONResponse(_error_body(code, message), status_code=status_code, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status_code >= 500:
        logger.info("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.code)
    return _error_response(request, exc.code, exc.message, exc.status_code, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "body"))
        problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return _error_response(request, "invalid_parameter", "; ".join(problems), 422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(request, code, str(exc.detail), exc.status_code, dict(exc.headers or {}))


REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()  # ASGI header names are lower-case bytes
# What a proxy or client may send as its request ID: printable ASCII without spaces (UUIDs, nginx's
# $request_id, trace headers), short enough for a log line. Anything else is replaced, not echoed.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The client's (or proxy's) X-Request-ID when it is sane, else a new random one."""
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER_BYTES:
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestObserver:
    """Outermost ASGI layer: gives every request an ID (X-Request-ID, echoed in the response and on
    every log line of the request), counts and times it by route template and status, and turns an
    unexpected exception into a 500 `internal_error` (traceback logged once, never sent)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False
        request_id = request_id_of(scope)
        token = current_request_id.set(request_id)
        self.metrics.in_progress.inc()

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != _REQUEST_ID_HEADER_BYTES
                ]
                message = {**message, "headers": [*headers, (_REQUEST_ID_HEADER_BYTES, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            logger.exception(
                "unhandled error on %s %s",
                scope.get("method"),
                scope.get("path"),
                extra={"request_id": request_id},
            )
            status = 500
            if not response_started:
                text = f"an internal error occurred; it has been logged with request id {request_id}"
                response = JSONResponse(_error_body("internal_error", text), status_code=500)
                await response(scope, receive, observed_send)
        finally:
            self.metrics.in_progress.dec()
            current_request_id.reset(token)
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(route=label, status=str(status)).inc()
            self.metrics.request_latency.labels(route=label).observe(time.perf_counter() - started)


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


async def _warm_up(service: ServiceState) -> None:
    """One batch of max_batch_size with every output, on each session: allocations, cuDNN algorithm
    search and the TensorRT engine are paid here, not by the first users."""
    assert service.batcher is not None and service.metadata is not None
    size = service.metadata.image_size
    batch = np.zeros((service.settings.max_batch_size, 3, size, size), dtype=np.float32)
    started = time.perf_counter()
    try:
        await asyncio.to_thread(service.batcher.run_direct, batch, OUTPUT_NAMES)
        if service.batcher.wide_runner is not None:
            await asyncio.to_thread(service.batcher.wide_runner.run, batch, OUTPUT_NAMES)
    except Exception as exc:
        service.startup_error = f"warm-up failed: {type(exc).__name__}: {exc}"
        logger.exception("warm-up failed; the service stays not-ready and /healthz reports 500")
        return
    service.mark_ready()
    logger.info(
        "ready: warmed up at batch %d in %.2f s on %s",
        service.settings.max_batch_size,
        time.perf_counter() - started,
        list(service.loaded.providers) if service.loaded else "?",
    )


def create_app(settings: Settings | None = None, *, runner: RunnerOverride | None = None) -> FastAPI:
    """Build the service. `runner` replaces the ONNX runner (tests: slow or failing runners) or, if
    it is a function, wraps it; the model file is loaded either way for its metadata."""
    settings = settings or load_settings()
    metrics = ServiceMetrics(max_batch_size=settings.max_batch_size)
    service = ServiceState(settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        path = check_model_file(settings)
        loaded = await asyncio.to_thread(
            create_session,
            path,
            providers=settings.providers,
            intra_op_threads=settings.resolved_intra_op_threads,
            max_batch_size=settings.max_batch_size,
            trt_fp16=settings.trt_fp16,
            trt_cache_dir=settings.trt_cache_dir,
            # Several instances may mean a second session (below): let the two share one arena.
            shared_arena=settings.model_instances > 1,
        )
        service.loaded = loaded
        if settings.oversubscribed:
            logger.warning(
                "%d model instances x %d intra-op threads exceed the %d usable cores: concurrent runs "
                "will preempt each other; set TRANSXNET_INTRA_OP_THREADS=0 to divide the cores",
                settings.model_instances,
                settings.resolved_intra_op_threads,
                settings.cores,
            )
        service.metadata = metadata = read_metadata(loaded.session)
        onnx_runner = OnnxRunner(loaded)
        service.output_shapes = onnx_runner.output_shapes()
        wide_runner = None
        service.lone_batch_threads = settings.lone_batch_threads(
            cpu_only=loaded.providers == ("CPUExecutionProvider",)
        )
        if service.lone_batch_threads:
            wide = await asyncio.to_thread(
                create_session,
                path,
                providers="cpu",
                intra_op_threads=service.lone_batch_threads,
                max_batch_size=settings.max_batch_size,
                shared_arena=True,
            )
            wide_runner = _build_runner(OnnxRunner(wide), runner)
            logger.info(
                "a batch that would run alone uses a second session with %d intra-op threads",
                service.lone_batch_threads,
            )
        workers = settings.resolved_preprocess_workers
        service.pool = DecodePool(workers, thread_name_prefix="preprocess")
        service.preprocessor = ImagePreprocessor(
            metadata,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            jpeg_reducing_gap=settings.jpeg_reducing_gap,
            # Half of a large resize goes to another decode thread when one is idle (none with one).
            offload=service.pool.submit_if_idle if settings.split_resize and workers > 1 else None,
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
            wide_runner=wide_runner,
            max_queue_size=settings.max_queue_size,
            request_timeout_s=settings.request_timeout_s,
            observer=metrics,
        )
        service.batcher = batcher
        metrics.track_queue_depth(lambda: batcher.queue_depth)
        batcher.start()
        logger.info(
            "serving %s (%s) from %s with %d model instance(s), %s intra-op thread(s) each; warming up "
            "at batch %d",
            metadata.variant,
            metadata.weights,
            path,
            settings.model_instances,
            settings.resolved_intra_op_threads or "ONNX Runtime's default",
            settings.max_batch_size,
        )
        warm_up = asyncio.create_task(_warm_up(service), name="warm-up")
        try:
            yield
        finally:
            service.begin_draining()
            warm_up.cancel()
            await batcher.stop(settings.shutdown_timeout_s)
            service.pool.shutdown(wait=False, cancel_futures=True)
            logger.info("stopped")

    app = FastAPI(
        title="TransXNet inference",
        version="0.1.0",
        description="Image classification and backbone features from an exported TransXNet (ONNX "
        'Runtime, dynamic batching). Errors are `{"error": {"code", "message"}}`.',
        lifespan=lifespan,
        docs_url=None,  # the offline /docs and /redoc (docs_ui) replace FastAPI's CDN pages
        redoc_url=None,
    )
    app.state.service = service
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(RequestObserver, metrics=metrics)
    app.include_router(inference.router)
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    app.include_router(v2.router)
    docs_ui.install(app)
    demo.install(app)
    return app
