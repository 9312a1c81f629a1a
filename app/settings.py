"""The service's configuration: one `Settings` read from `TRANSXNET_*` environment variables (or a
`.env` file), validated once at start-up so a bad value stops the process with a one-line message
naming the variable instead of failing later under load.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.batching import BatchWait
from app.imaging.decode import DECODE_BYTES_PER_PIXEL
from runtime.session import ProviderPreference

ENV_PREFIX = "TRANSXNET_"
MIB = 1024 * 1024


#: Where the kernel publishes this process's CPU quota (cgroup v2, then v1).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit() -> int | None:
    """Whole cores of the cgroup's CPU quota (a Kubernetes CPU limit), rounded up; None if none.

    A pod limited to 2 CPUs still sees every core of its node in its affinity mask, so thread counts
    derived from the mask alone would oversubscribe the quota and be throttled."""
    try:
        if CGROUP_CPU_MAX.is_file():
            quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        elif CGROUP_V1_QUOTA.is_file() and CGROUP_V1_PERIOD.is_file():
            quota, period = CGROUP_V1_QUOTA.read_text().strip(), CGROUP_V1_PERIOD.read_text().strip()
        else:
            return None
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask (which containers' cpusets narrow),
    bounded by its cgroup CPU quota (which Kubernetes CPU limits set)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit is not None else cores


class SettingsError(ValueError):
    """A setting is invalid or the model file is missing; the message is meant for the operator."""


class Settings(BaseSettings):
    """Everything an operator can tune; each field is `TRANSXNET_<NAME>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Model and runtime
    model_path: Path = Field(Path("models/transxnet_t.onnx"), description="The exported ONNX file.")
    providers: ProviderPreference = Field(
        "auto", description="auto tries TensorRT -> CUDA -> CPU; a named GPU provider never falls back."
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads per batch; 0 = ORT's default (one per core) with one "
        "model instance, the cores divided among the instances with more.",
    )
    model_instances: int = Field(
        1,
        ge=1,
        le=16,
        description="Batches run at once, each in its own thread (Triton's instance count). On CPU, 2 "
        "(one intra-op thread each, plus an all-cores session for a batch that runs alone) gave "
        "1.17x the throughput at c=16 on 2 cores, the same c=1 latency and a longer p99 under load: "
        "see docs/benchmarks.md.",
    )
    trt_fp16: bool = Field(True, description="Let TensorRT use FP16 kernels.")
    trt_cache_dir: Path | None = Field(None, description="TensorRT engine/timing cache (None: rebuild).")

    # Dynamic batching
    max_batch_size: int = Field(16, ge=1, le=1024, description="Images per inference batch.")
    max_batch_delay_ms: float = Field(
        5.0, ge=0, le=10_000, description="How long the first queued image waits for batch-mates."
    )
    batch_wait: BatchWait = Field(
        "incoming",
        description="incoming: the first queued image waits (up to max_batch_delay_ms) only for images "
        "already being decoded, so a lone request never idles; always: it waits the full delay.",
    )
    max_queue_size: int = Field(256, ge=1, description="Queued images before requests get 503.")
    request_timeout_s: float = Field(30.0, gt=0, description="Queue wait after which a request gets 504.")

    # Input limits
    max_image_bytes: int = Field(20 * MIB, ge=1, description="Encoded bytes per image (413 above).")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Decoded pixels per image (413 above).")
    max_images_per_request: int = Field(32, ge=1, description="Images per request (413 above).")
    max_inflight_bytes: int = Field(
        512 * MIB,
        ge=MIB,
        description="Request bytes held in memory at once across all requests (bodies being read, "
        "decodes running, decoded images waiting for their batch, parsed JSON): 503 + Retry-After "
        "beyond it, and no single request may be larger. It must hold one largest image: its bytes "
        "and its decode (8 bytes per pixel of max_image_pixels).",
    )
    jpeg_reducing_gap: float = Field(
        0.0,
        ge=0,
        le=64,
        description="0: pixel-exact with timm's eval transform. >= 1: decode large JPEGs at 1/2, 1/4 or "
        "1/8 scale while they stay at least this many times the resize target (2.0 is Pillow's "
        "thumbnail default): several times cheaper for phone photos, not pixel-exact.",
    )
    preprocess_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Decode/preprocess threads; 0 = half the CPU cores, at least 2, at most 4.",
    )

    # Server
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (REST routes and /v2).")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="Open Inference Protocol over gRPC (Triton's port); 0 turns it off."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="How long a connection may take to send a request's headers before it is closed "
        "(idle and slow-header connections hold a socket each).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Longest pause between two pieces of a request body before the request gets 408 "
        "(nginx's client_body_timeout is 60 s between reads); over gRPC, which hands a message over "
        "only whole, the time for the whole ModelInfer message (DEADLINE_EXCEEDED beyond it).",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open HTTP connections (and requests) at once; a request beyond it gets 503.",
    )
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="After SIGTERM: how long in-flight requests may take to finish."
    )
    shutdown_grace_s: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM: how long to keep the listener open with /readyz at 503 (so load "
        "balancers stop routing here) before closing it; new work is refused with 503 meanwhile.",
    )

    @field_validator("jpeg_reducing_gap")
    @classmethod
    def _reducing_gap_is_off_or_at_least_one(cls, gap: float) -> float:
        if 0 < gap < 1:
            raise ValueError(
                "a gap below 1 would upsample after decoding: use 0 (pixel-exact) or a value >= 1 "
                "(2.0 is a good choice)"
            )
        return gap

    @model_validator(mode="after")
    def _limits_fit_the_queue(self) -> Settings:
        # A request larger than the whole queue could never be admitted: refuse the combination.
        if self.max_images_per_request > self.max_queue_size:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) exceeds max_queue_size "
                f"({self.max_queue_size}): raise {ENV_PREFIX}MAX_QUEUE_SIZE or lower "
                f"{ENV_PREFIX}MAX_IMAGES_PER_REQUEST"
            )
        largest = self.max_image_bytes + DECODE_BYTES_PER_PIXEL * self.max_image_pixels
        if largest > self.max_inflight_bytes:
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) cannot hold one image at the limits: "
                f"{self.max_image_bytes} bytes and its decode ({DECODE_BYTES_PER_PIXEL} bytes per pixel "
                f"of max_image_pixels={self.max_image_pixels}), {largest} in all; raise "
                f"{ENV_PREFIX}MAX_INFLIGHT_BYTES or lower {ENV_PREFIX}MAX_IMAGE_PIXELS / MAX_IMAGE_BYTES"
            )
        return self

    @property
    def resolved_preprocess_workers(self) -> int:
        """Decode threads: half the cores by default, but never one.

        A single thread puts every request behind the slowest decode in flight: one 12-Mpixel phone
        photo (~150 ms) stalls all the thumbnails queued after it. Two threads measured +27% at c=16
        on phone uploads and no loss on small photos on 2 cores (docs/benchmarks.md).
        """
        if self.preprocess_workers:
            return self.preprocess_workers
        return max(2, min(4, usable_cores() // 2))

    @property
    def resolved_intra_op_threads(self) -> int:
        """Intra-op threads per run: as set, else ORT's default (0) for one instance, else the
        usable cores shared out, so that concurrent runs do not oversubscribe them."""
        if self.intra_op_threads or self.model_instances == 1:
            return self.intra_op_threads
        return max(1, usable_cores() // self.model_instances)

    def lone_batch_threads(self, cpu_only: bool) -> int:
        """Threads for a second, all-cores session that runs a batch when it would run alone; 0 for
        none. Only with several CPU instances of fewer threads each: one instance already has them
        all, and on a GPU the thread count does not matter."""
        cores = usable_cores()
        if self.model_instances == 1 or not cpu_only:
            return 0
        return cores if self.resolved_intra_op_threads < cores else 0

    @property
    def cores(self) -> int:
        """The usable cores the thread counts above are derived from."""
        return usable_cores()

    @property
    def oversubscribed(self) -> bool:
        """More intra-op threads across the instances than usable cores: runs would preempt each
        other's threads, which the two-instance setting exists to avoid."""
        threads = self.resolved_intra_op_threads
        return self.model_instances > 1 and threads * self.model_instances > usable_cores()


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; `SettingsError` carries one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            names = [str(part) for part in error["loc"]]
            where = f"{ENV_PREFIX}{names[0].upper()}" if names else "settings"
            value = f" (got {error['input']!r})" if names and "input" in error else ""
            message = error["msg"].removeprefix("Value error, ")  # pydantic's wrapper for our ValueErrors
            problems.append(f"{where}: {message}{value}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from exc


def check_model_file(settings: Settings) -> Path:
    """The model file must exist before anything starts; say how to make one if it does not."""
    path = settings.model_path
    if not path.is_file():
        raise SettingsError(
            f"{ENV_PREFIX}MODEL_PATH: no ONNX model at {path}; export one with "
            f"`python -m export --variant t --output {path}` or point {ENV_PREFIX}MODEL_PATH at an "
            "exported file"
        )
    return path
