"""Triton's per-model inference statistics, from the service's real counters.

Triton's model statistics extension (what `perf_analyzer` and `model_analyzer` read) counts per
request: `success` / `fail` (count and whole duration), `queue` (waiting for a batch), `compute_input`
(preparing the input tensors: here decoding and preprocessing), `compute_infer` (the model runs its
batches), `compute_output` (turning outputs into the response); per executed batch size the same
three compute phases; `inference_count` (images inferred) and `execution_count` (batches run). Every
transport's requests count, since they share one model and one batcher.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * NS)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class RequestTiming:
    """What one request spent where; filled in by the pipeline and the batcher."""

    queue_s: float = 0.0
    input_s: float = 0.0
    infer_s: float = 0.0
    output_s: float = 0.0


@dataclass
class _BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class InferenceStatistics:
    """Thread-safe counters: requests end on the event loop, batches in inference threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self._batches: dict[int, _BatchStats] = {}

    def request_done(self, *, ok: bool, seconds: float, timing: RequestTiming, images: int) -> None:
        with self._lock:
            if not ok:
                self.fail.add(seconds)
                return
            self.success.add(seconds)
            self.queue.add(timing.queue_s)
            self.compute_input.add(timing.input_s)
            self.compute_infer.add(timing.infer_s)
            self.compute_output.add(timing.output_s)
            self.inference_count += images
            self.last_inference_ms = int(time.time() * 1000)

    def batch_done(self, size: int, input_s: float, infer_s: float, output_s: float) -> None:
        with self._lock:
            self.execution_count += 1
            stats = self._batches.setdefault(size, _BatchStats())
            stats.compute_input.add(input_s)
            stats.compute_infer.add(infer_s)
            stats.compute_output.add(output_s)

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        """One entry of Triton's `model_stats`, with its field names."""
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_dict(),
                    "fail": self.fail.as_dict(),
                    "queue": self.queue.as_dict(),
                    "compute_input": self.compute_input.as_dict(),
                    "compute_infer": self.compute_infer.as_dict(),
                    "compute_output": self.compute_output.as_dict(),
                    "cache_hit": Duration().as_dict(),
                    "cache_miss": Duration().as_dict(),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": stats.compute_input.as_dict(),
                        "compute_infer": stats.compute_infer.as_dict(),
                        "compute_output": stats.compute_output.as_dict(),
                    }
                    for size, stats in sorted(self._batches.items())
                ],
            }
