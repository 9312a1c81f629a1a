"""Prometheus metrics, one `CollectorRegistry` per service so several (tests) never collide, and
Triton's model statistics beside them."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.statistics import InferenceStatistics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Decoding one image takes ~1-10 ms for web-sized photos and ~100 ms for a 12-Mpixel one.
PREPROCESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two from 1 to at least 64 and at least max_batch_size (fixed buckets keep
    dashboards comparable across deployments with different batch limits)."""
    buckets = [1]
    while buckets[-1] < max(64, max_batch_size):
        buckets.append(buckets[-1] * 2)
    return tuple(float(b) for b in buckets)


class ServiceMetrics:
    """The service's metrics; also the batcher's `BatchObserver`."""

    def __init__(self, *, max_batch_size: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        #: Triton's per-model statistics (/v2/models/{m}/stats), fed by the same events.
        self.statistics = InferenceStatistics()
        r = self.registry
        self.requests = Counter(
            "transxnet_requests",
            "Requests by transport (http, grpc), route (or gRPC method) and status (or gRPC code).",
            ["transport", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "transxnet_request_duration_seconds",
            "Request latency by transport and route (or gRPC method).",
            ["transport", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "transxnet_queue_wait_seconds",
            "Time an image waited for its batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "transxnet_preprocess_seconds",
            "Time to decode, resize and normalise one image (successful ones), in the preprocessing pool.",
            buckets=PREPROCESS_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "transxnet_inference_seconds", "Time to run one batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "transxnet_batch_size",
            "Images per inference batch.",
            buckets=batch_size_buckets(max_batch_size),
            registry=r,
        )
        self.queue_depth = Gauge("transxnet_queue_depth", "Images waiting for a batch.", registry=r)
        self.images = Counter("transxnet_images_processed", "Images run through the model.", registry=r)
        self.timeouts = Counter(
            "transxnet_request_timeouts", "Requests that waited past request_timeout_s.", registry=r
        )
        self.ready = Gauge("transxnet_ready", "1 when the service accepts work.", registry=r)
        # What a drain still has to finish (the scrape that reads it counts itself).
        self.in_progress = Gauge(
            "transxnet_requests_in_progress", "Requests (HTTP and gRPC) being handled now.", registry=r
        )
        self.overloaded = Counter(
            "transxnet_overloaded_requests",
            "Requests refused because the request bytes in memory would pass max_inflight_bytes.",
            registry=r,
        )

    def record_request(self, transport: str, route: str, status: str, seconds: float) -> None:
        self.requests.labels(transport=transport, route=route, status=status).inc()
        self.request_latency.labels(transport=transport, route=route).observe(seconds)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    # BatchObserver
    def batch_done(self, size: int, input_s: float, infer_s: float, output_s: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(infer_s)
        self.images.inc(size)
        self.statistics.batch_done(size, input_s, infer_s, output_s)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def request_timed_out(self) -> None:
        self.timeouts.inc()
