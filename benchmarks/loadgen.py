"""The benchmark's client side: a JPEG corpus from the sample photos, an asynchronous closed-loop load
generator, Prometheus histogram scraping and a psutil sampler for the server's process tree.

Closed loop (each of `concurrency` workers sends its next request when the previous one is answered)
because that is what "concurrency N" means to a user sizing a client pool, and because an open loop
on 2 shared cores would mostly measure the client's own queue once the server saturates.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "preprocess" / "photos"
#: Longer sides the photos are re-encoded at: thumbnails to a typical phone upload downscaled by a CDN.
CORPUS_SIDES = (256, 480, 800, 1024)
#: A 12-Mpixel phone camera's longer side: uploads sent as taken, never resized by a client.
PHONE_SIDES = (4032,)
#: The load corpora by name: `web` is the default; `phone` is where decoding dominates.
CORPORA: dict[str, tuple[int, ...]] = {"web": CORPUS_SIDES, "phone": PHONE_SIDES}


def jpeg_corpus(sides: Sequence[int] = CORPUS_SIDES, quality: int = 88) -> list[bytes]:
    """Every sample photo at every side length, as baseline JPEG (varied sizes keep decode cost
    realistic instead of one cached size)."""
    blobs: list[bytes] = []
    for path in sorted(PHOTOS.iterdir()):
        with Image.open(path) as photo:
            rgb = photo.convert("RGB")
        for side in sides:
            scale = side / max(rgb.size)
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            buffer = io.BytesIO()
            rgb.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=quality)
            blobs.append(buffer.getvalue())
    return blobs


@dataclass
class LoadResult:
    """What one load level measured on the client side."""

    concurrency: int
    requests: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        """Successful images per second (one image per request)."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_s) * 1000.0, q))


async def _drive(
    url: str, blobs: Sequence[bytes], concurrency: int, total: int, timeout_s: float
) -> LoadResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    result = LoadResult(concurrency=concurrency, requests=total, wall_s=0.0)
    next_index = 0

    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < total:
                index = next_index
                next_index += 1
                blob = blobs[index % len(blobs)]
                # multipart `file`: the one upload shape both our service and LitServe's form path take.
                files = {"file": (f"{index}.jpg", blob, "image/jpeg")}
                started = time.perf_counter()
                try:
                    response = await client.post(url, files=files)
                except httpx.TransportError:
                    result.transport_errors += 1
                    continue
                elapsed = time.perf_counter() - started
                result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    result.latencies_s.append(elapsed)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


def run_load(
    url: str, blobs: Sequence[bytes], *, concurrency: int, total: int, timeout_s: float = 120.0
) -> LoadResult:
    """Send `total` one-image requests with `concurrency` in flight; latencies of the 200s only."""
    return asyncio.run(_drive(url, blobs, concurrency, total, timeout_s))


# --------------------------------------------------------------------------- Prometheus scraping


@dataclass
class Histogram:
    """A Prometheus histogram's cumulative buckets, sum and count (one label set)."""

    buckets: dict[float, float]
    sum: float
    count: float

    def __sub__(self, other: Histogram) -> Histogram:
        return Histogram(
            {le: value - other.buckets.get(le, 0.0) for le, value in self.buckets.items()},
            self.sum - other.sum,
            self.count - other.count,
        )

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else float("nan")

    def per_bucket(self) -> dict[float, float]:
        """Non-cumulative counts: observations with previous_le < value <= le."""
        out: dict[float, float] = {}
        previous = 0.0
        for le in sorted(self.buckets):
            out[le] = self.buckets[le] - previous
            previous = self.buckets[le]
        return out


def scrape_histograms(base_url: str) -> dict[str, Histogram]:
    """Our service's unlabelled histograms plus the /classify request-latency one, by metric name."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    found: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        buckets: dict[float, float] = {}
        total = count = 0.0
        for sample in family.samples:
            if sample.labels.get("route", "/classify") != "/classify":
                continue
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
        if buckets:
            found[family.name] = Histogram(buckets, total, count)
    return found


# --------------------------------------------------------------------------- server resource sampling


class ProcessSampler:
    """Samples CPU% and RSS of a process and its children (LitServe runs its model in a child
    process; our service is one process) in a background thread, every `interval_s`."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.cpu_percent: list[float] = []
        self.rss_bytes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-sampler", daemon=True)
        self._known: dict[int, object] = {}

    def _tree(self) -> list:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except self._psutil.NoSuchProcess:
            return []
        tree = []
        for process in processes:
            # Keep one Process object per pid: cpu_percent() measures since that object's last call.
            known = self._known.setdefault(process.pid, process)
            tree.append(known)
        return tree

    def sample_rss(self) -> int:
        total = 0
        for process in self._tree():
            with contextlib.suppress(self._psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total

    def _loop(self) -> None:
        for process in self._tree():
            with contextlib.suppress(self._psutil.NoSuchProcess):
                process.cpu_percent(None)
        while not self._stop.wait(self.interval_s):
            cpu, rss = 0.0, 0
            for process in self._tree():
                try:
                    cpu += process.cpu_percent(None)
                    rss += process.memory_info().rss
                except self._psutil.NoSuchProcess:
                    pass
            self.cpu_percent.append(cpu)
            self.rss_bytes.append(rss)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def mean_cpu(self) -> float:
        # The first sample after start covers the interval since priming: all samples are fair.
        return float(np.mean(self.cpu_percent)) if self.cpu_percent else float("nan")

    @property
    def peak_rss(self) -> int:
        return max(self.rss_bytes, default=self.sample_rss())
