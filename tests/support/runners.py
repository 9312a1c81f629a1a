"""Runners for tests: a numpy stand-in with gates and failures for batcher unit tests, and wrappers
around the real ONNX runner (slow / failing) that the service takes through `create_app(runner=...)`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from app.batching import ModelRunner


class InFlight:
    """How many calls are inside a runner now and at most; thread-safe, since model instances run
    batches concurrently."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


class RecordingRunner:
    """Answers output `id` with each image's first pixel, recording every batch it was given.

    `gate`: when set to a cleared Event, each call blocks until the test sets it, so tests control
    what is "in flight". `fail_on`: a pixel value that makes the whole batch raise.
    """

    def __init__(self, *, gate: threading.Event | None = None, fail_on: float | None = None) -> None:
        self.gate = gate
        self.fail_on = fail_on
        self.batches: list[list[float]] = []
        self.outputs_seen: list[tuple[str, ...]] = []
        self.calls_started = 0
        self.in_flight = InFlight()

    def run(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.calls_started += 1
        with self.in_flight.call():
            return self._answer(batch, outputs)

    def _answer(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        ids = batch[:, 0, 0, 0].astype(np.float64)
        self.batches.append(ids.tolist())
        self.outputs_seen.append(tuple(outputs))
        if self.fail_on is not None and self.fail_on in ids:
            raise RuntimeError("injected inference failure")
        return {name: ids.copy() for name in outputs}

    @property
    def images_seen(self) -> list[float]:
        return [i for batch in self.batches for i in batch]


class SlowRunner:
    """Delays every batch after the first `warmup_calls` (warm-up stays fast)."""

    def __init__(self, inner: ModelRunner, delay_s: float, warmup_calls: int = 1) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.warmup_calls = warmup_calls
        self.calls = 0

    def run(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls > self.warmup_calls:
            time.sleep(self.delay_s)
        return self.inner.run(batch, outputs)


class FailingRunner:
    """Fails the next `failures` batches after warm-up, then behaves."""

    def __init__(self, inner: ModelRunner, failures: int = 1, warmup_calls: int = 1) -> None:
        self.inner = inner
        self.failures = failures
        self.warmup_calls = warmup_calls
        self.calls = 0

    def run(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls > self.warmup_calls and self.failures > 0:
            self.failures -= 1
            raise RuntimeError("injected inference failure")
        return self.inner.run(batch, outputs)


def image(value: float, size: int = 4) -> np.ndarray:
    """A tiny image whose first pixel identifies it."""
    return np.full((3, size, size), value, dtype=np.float32)


class GatedRunner:
    """Blocks every batch after `warmup_calls` (or the warm-up itself with warmup_calls=0) until the
    test sets `gate`, so tests decide what is in flight without timing."""

    def __init__(self, inner: ModelRunner, gate: threading.Event, warmup_calls: int = 1) -> None:
        self.inner = inner
        self.gate = gate
        self.warmup_calls = warmup_calls
        self.calls = 0
        self.in_flight = InFlight()

    def run(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.calls += 1
        with self.in_flight.call():
            if self.calls > self.warmup_calls and not self.gate.wait(timeout=30):
                raise RuntimeError("test gate never opened")
            return self.inner.run(batch, outputs)


class NanRunner:
    """Returns NaN logits after warm-up: an unexpected failure past the batcher (JSON refuses NaN)."""

    def __init__(self, inner: ModelRunner) -> None:
        self.inner = inner
        self.calls = 0

    def run(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.calls += 1
        values = self.inner.run(batch, outputs)
        if self.calls > 1:
            values = {name: np.full_like(array, np.nan) for name, array in values.items()}
        return values
