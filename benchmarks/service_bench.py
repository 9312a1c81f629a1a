"""Service benchmark: the real service under load, against its ceiling and its peers.

    python -m benchmarks.service_bench            # full run (~15 min on 2 cores)
    python -m benchmarks.service_bench --quick    # end-to-end smoke run (~3-4 min)

What one run measures, each server in its own process, one at a time (so they never share cores):

1. the ceiling: raw ONNX Runtime throughput per batch size (`benchmarks/ort_ceiling.py`, its own
   process, the service's own session options), and the per-image cost of decode, resize+crop,
   normalise and response serialisation (in this process, single-threaded);
2. `service`: `python -m app` with its defaults (TRANSXNET_PROVIDERS=cpu);
3. `service-nobatch`: the same with TRANSXNET_MAX_BATCH_SIZE=1;
4. `litserve`: LitServe on the same ONNX file and preprocessing, its own batching on
   (`benchmarks/litserve_peer.py` says how it is configured);
5. with `--sweep` (default in full runs): service settings that matter on a small CPU box
   (intra-op threads, preprocess workers, batch delay, max batch, reduced-scale JPEG decoding) at
   concurrency 1 and 16.

`--servers` also takes `service-jpeg-draft` (the service with TRANSXNET_JPEG_REDUCING_GAP=2).

`--transports classify,v2-http,v2-grpc`: the service (gRPC on) under the same load over each of its
ways in, on the same images and for the same top-5 answer (`benchmarks/transports.py`), at
`--transport-concurrency` (1, 16, 64), the transports interleaved within each level; its own table
and plot (`..._transports.png`).

Load: a closed loop of one-JPEG multipart requests (the sample photos re-encoded at 256..1024 px;
`--corpus phone`: at 4032 px, as a phone uploads them) at concurrency 1, 4, 16, 64. Reported per
level: throughput, latency p50/p90/p99, errors, the batch-size distribution and mean queue wait /
inference time (from the service's /metrics, diffed around the level), and the server's CPU% and
peak RSS (psutil, process tree). Results go to `benchmarks/results/service_bench[_quick][_phone].
{md,json,png}`.

The numbers mean something only on a quiet machine: the run records the load average before it
starts and warns when other work is running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/service_bench.py` works too
    sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import (  # noqa: E402
    CORPORA,
    Histogram,
    LoadResult,
    ProcessSampler,
    jpeg_corpus,
    run_load,
    scrape_histograms,
)
from benchmarks.transports import TRANSPORTS, run_transport  # noqa: E402
from tests.support.processes import free_port, service_process  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MODEL = ROOT / "models" / "transxnet_t.onnx"
GIB = 2**30

BATCH_METRIC = "transxnet_batch_size"
QUEUE_METRIC = "transxnet_queue_wait_seconds"
INFERENCE_METRIC = "transxnet_inference_seconds"
REQUEST_METRIC = "transxnet_request_duration_seconds"
PREPROCESS_METRIC = "transxnet_preprocess_seconds"
WARMUP_REQUESTS = 24  # per server before measuring (8 with --quick)


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test and how to know it is ready."""

    name: str
    kind: str  # "service" or "litserve"
    env: tuple[tuple[str, str], ...] = ()
    #: The module that runs the service: the real one, or the instrumented one for A/B variants.
    module: str = "app"
    args: tuple[str, ...] = ()
    #: Another checkout of the project to run the service from (a before/after comparison).
    tree: Path | None = None

    def command(self, model: Path, port: int) -> list[str]:
        if self.kind == "litserve":
            return [
                sys.executable,
                "-m",
                "benchmarks.litserve_peer",
                "--model",
                str(model),
                "--port",
                str(port),
            ]
        return [sys.executable, "-m", self.module, *self.args]

    @property
    def environment(self) -> dict[str, str]:
        # The service's own defaults (every core), not the tests' one intra-op thread.
        tree = {"PYTHONPATH": str(self.tree)} if self.tree is not None else {}
        return {
            "TRANSXNET_INTRA_OP_THREADS": "0",
            "LITSERVE_DISABLE_TELEMETRY": "1",
            **tree,
            **dict(self.env),
        }

    @property
    def ready_path(self) -> str:
        return "/health" if self.kind == "litserve" else "/readyz"


#: The servers a run can compare, by `--servers` name.
SERVER_SPECS: dict[str, ServerSpec] = {
    "service": ServerSpec("service", "service"),
    "service-nobatch": ServerSpec("service-nobatch", "service", (("TRANSXNET_MAX_BATCH_SIZE", "1"),)),
    # The opt-in reduced-scale JPEG decoding (not pixel-exact), at Pillow's thumbnail default.
    "service-jpeg-draft": ServerSpec(
        "service-jpeg-draft", "service", (("TRANSXNET_JPEG_REDUCING_GAP", "2.0"),)
    ),
    # Every resize in one thread (the default before 2026-11-25 splits large ones over two).
    "service-nosplit": ServerSpec(
        "service-nosplit", "service", module="tests.support.serve", args=("--no-split-resize",)
    ),
    # Two batches at once, one intra-op thread each (Triton's instance count of 2).
    "service-2x1": ServerSpec("service-2x1", "service", (("TRANSXNET_MODEL_INSTANCES", "2"),)),
    "litserve": ServerSpec("litserve", "litserve"),
}


@contextlib.contextmanager
def running_server(spec: ServerSpec, model: Path, timeout_s: float = 300) -> Iterator[tuple[str, int]]:
    """Start the server, wait until it answers ready, yield (base URL, pid); stop it with SIGTERM."""
    with service_process(
        model,
        command=lambda port: spec.command(model, port),
        ready_path=spec.ready_path,
        ready_timeout_s=timeout_s,
        graceful_stop=True,
        env=spec.environment,
    ) as server:
        yield server.base, server.pid


# --------------------------------------------------------------------------- measurements


def measure_ceiling(model: Path, batch_sizes: Sequence[int], seconds: float, intra_op: int) -> dict:
    """Raw ORT throughput in a separate process (its thread pool alone on the cores)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.ort_ceiling",
            "--model",
            str(model),
            "--batch-sizes",
            ",".join(str(b) for b in batch_sizes),
            "--seconds",
            str(seconds),
            "--intra-op-threads",
            str(intra_op),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_preprocessing(
    model: Path, blobs: Sequence[bytes], repeats: int, jpeg_reducing_gap: float = 0.0
) -> dict[str, float]:
    """Per-image milliseconds of each CPU step outside the model, single-threaded, on the corpus."""
    import onnxruntime as ort

    from app.imaging import ImagePreprocessor
    from app.postprocess import classify_payload, dumps
    from runtime.session import read_metadata

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    metadata = read_metadata(ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]))
    pre = ImagePreprocessor(
        metadata,
        max_image_bytes=20 * 2**20,
        max_image_pixels=40_000_000,
        jpeg_reducing_gap=jpeg_reducing_gap,
    )
    totals = {"decode": 0.0, "resize_crop": 0.0, "normalize": 0.0, "serialize": 0.0}
    logits = np.random.default_rng(0).standard_normal(metadata.num_classes).astype(np.float32)
    count = 0
    for _ in range(repeats):
        for blob in blobs:
            t0 = time.perf_counter()
            image = pre.decode(blob)
            t1 = time.perf_counter()
            pixels = pre.transform(image)
            t2 = time.perf_counter()
            pre.normalize(pixels)
            t3 = time.perf_counter()
            dumps(classify_payload([{"logits": logits}], metadata, 5))
            t4 = time.perf_counter()
            totals["decode"] += t1 - t0
            totals["resize_crop"] += t2 - t1
            totals["normalize"] += t3 - t2
            totals["serialize"] += t4 - t3
            count += 1
    return {name: 1000.0 * value / count for name, value in totals.items()}


def level_report(
    result: LoadResult, before: dict[str, Histogram], after: dict[str, Histogram], sampler: ProcessSampler
) -> dict:
    """One concurrency level as plain data for the JSON/markdown."""
    row: dict = {
        "concurrency": result.concurrency,
        "requests": result.requests,
        "ok": result.ok,
        "errors": {str(k): v for k, v in result.statuses.items() if k != 200},
        "transport_errors": result.transport_errors,
        "wall_s": round(result.wall_s, 3),
        "throughput_img_s": round(result.throughput, 2),
        "p50_ms": round(result.percentile_ms(50), 1),
        "p90_ms": round(result.percentile_ms(90), 1),
        "p99_ms": round(result.percentile_ms(99), 1),
        "server_cpu_percent": round(sampler.mean_cpu, 1),
        "server_peak_rss_mib": round(sampler.peak_rss / 2**20, 1),
    }
    if BATCH_METRIC in after:
        batches = after[BATCH_METRIC] - before.get(BATCH_METRIC, Histogram({}, 0, 0))
        row["batches"] = int(batches.count)
        row["mean_batch_size"] = round(batches.mean, 2)
        row["batch_size_histogram"] = {
            f"<={int(le)}": int(n) for le, n in batches.per_bucket().items() if n and le != float("inf")
        }
        for key, metric in (
            ("queue_wait_ms", QUEUE_METRIC),
            ("inference_ms_per_batch", INFERENCE_METRIC),
            ("server_request_ms", REQUEST_METRIC),
            ("preprocess_ms_per_image", PREPROCESS_METRIC),
        ):
            if metric in after:
                diff = after[metric] - before.get(metric, Histogram({}, 0, 0))
                row[f"mean_{key}"] = round(1000.0 * diff.mean, 1)
    return row


def bench_server(
    spec: ServerSpec, model: Path, blobs: Sequence[bytes], levels: Sequence[int], requests: int, warmup: int
) -> dict:
    """Start `spec`, warm it up, then run each concurrency level; returns rows + idle/peak RSS."""
    rows = []
    with running_server(spec, model) as (base, pid):
        url = f"{base}/classify"
        run_load(url, blobs, concurrency=4, total=warmup)
        idle = ProcessSampler(pid)
        idle_rss = idle.sample_rss()
        for concurrency in levels:
            total = max(requests, 2 * concurrency)
            is_service = spec.kind == "service"
            before = scrape_histograms(base) if is_service else {}
            with ProcessSampler(pid) as sampler:
                result = run_load(url, blobs, concurrency=concurrency, total=total)
            after = scrape_histograms(base) if is_service else {}
            row = level_report(result, before, after, sampler)
            rows.append(row)
            print(
                f"  {spec.name:>16} c={concurrency:<3} {row['throughput_img_s']:6.1f} img/s  "
                f"p50 {row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  "
                f"cpu {row['server_cpu_percent']:5.0f}%"
                f"  batch {row.get('mean_batch_size', '-')}",
                flush=True,
            )
    return {
        "name": spec.name,
        "env": dict(spec.env),
        "idle_rss_mib": round(idle_rss / 2**20, 1),
        "levels": rows,
    }


def bench_transports(
    model: Path,
    blobs: Sequence[bytes],
    transports: Sequence[str],
    levels: Sequence[int],
    requests: int,
    warmup: int,
) -> list[dict]:
    """The service with gRPC on, loaded over each transport in turn at each level (interleaved, so
    drift on a shared machine spreads over all of them); one result per transport, as `bench_server`'s."""
    grpc_port = free_port()
    spec = ServerSpec("service", "service", (("TRANSXNET_GRPC_PORT", str(grpc_port)),))
    results = {name: {"name": name, "env": dict(spec.env), "levels": []} for name in transports}
    with running_server(spec, model) as (base, pid):
        where = {"base": base, "grpc_address": f"127.0.0.1:{grpc_port}", "model": model.stem, "blobs": blobs}
        for name in transports:
            run_transport(name, concurrency=4, total=warmup, **where)
        results_idle = ProcessSampler(pid).sample_rss()
        for concurrency in levels:
            for name in transports:
                before = scrape_histograms(base)
                with ProcessSampler(pid) as sampler:
                    result, refused = run_transport(
                        name, concurrency=concurrency, total=max(requests, 2 * concurrency), **where
                    )
                row = level_report(result, before, scrape_histograms(base), sampler)
                row["refused"] = dict(refused)
                results[name]["levels"].append(row)
                print(
                    f"  {name:>9} c={concurrency:<3} {row['throughput_img_s']:6.1f} img/s  "
                    f"p50 {row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  batch "
                    f"{row.get('mean_batch_size', '-')}  refused {row['refused'] or 0}",
                    flush=True,
                )
    for result in results.values():
        result["idle_rss_mib"] = round(results_idle / 2**20, 1)
    return list(results.values())


# --------------------------------------------------------------------------- report


def level_row(server: dict, concurrency: int) -> dict | None:
    """A `bench_server` result's row for one concurrency level, if it ran."""
    return next((row for row in server["levels"] if row["concurrency"] == concurrency), None)


def _server(report: dict, name: str) -> dict | None:
    return next((server for server in report["servers"] if server["name"] == name), None)


def best_batch(ceiling: dict) -> tuple[str, dict]:
    """(batch size, its row) where raw ORT had the highest throughput, from `measure_ceiling`'s result."""
    return max(ceiling["batch_sizes"].items(), key=lambda item: item[1]["images_per_s"])


#: The issue's targets for the service: c=1 p50 within this of the batch-1 model latency ...
P50_OVER_MODEL_TARGET_MS = 10.0
#: ... and c=16 throughput at least this share of raw ORT at its best batch size.
CEILING_SHARE_TARGET = 0.9


def evaluate_targets(report: dict) -> list[dict]:
    """The four targets of the issue, each with the numbers it compares."""
    ceiling = report["ceiling"]["batch_sizes"]
    best_bs, best = best_batch(report["ceiling"])
    targets = []
    service = _server(report, "service")
    if service is None:
        return targets
    c16 = level_row(service, 16)
    c1 = level_row(service, 1)
    if c16:
        ratio = c16["throughput_img_s"] / best["images_per_s"]
        targets.append(
            {
                "target": "service throughput at c=16 >= 90% of raw ORT at its best batch size",
                "measured": f"{c16['throughput_img_s']:.1f} vs {best['images_per_s']:.1f} img/s "
                f"(batch {best_bs}):"
                f" {100 * ratio:.0f}%",
                "met": ratio >= CEILING_SHARE_TARGET,
            }
        )
    if c1 and "1" in ceiling:
        model_ms = ceiling["1"]["batch_ms_p50"]
        targets.append(
            {
                "target": "p50 at c=1 <= model latency at batch 1 + 10 ms",
                "measured": f"{c1['p50_ms']:.1f} ms vs {model_ms:.1f} + 10 ms",
                "met": c1["p50_ms"] <= model_ms + P50_OVER_MODEL_TARGET_MS,
            }
        )
    lit = _server(report, "litserve")
    if c16 and lit and level_row(lit, 16):
        l16 = level_row(lit, 16)
        assert l16 is not None
        ratio = c16["throughput_img_s"] / max(l16["throughput_img_s"], 1e-9)
        targets.append(
            {
                "target": "throughput >= 1.5x LitServe at c=16, p99 no worse",
                "measured": f"{ratio:.2f}x ({c16['throughput_img_s']:.1f} vs "
                f"{l16['throughput_img_s']:.1f} img/s);"
                f" p99 {c16['p99_ms']:.0f} vs {l16['p99_ms']:.0f} ms",
                "met": ratio >= 1.5 and c16["p99_ms"] <= l16["p99_ms"],
            }
        )
    peak = max(row["server_peak_rss_mib"] for row in service["levels"])
    targets.append(
        {
            "target": "server RSS <= 1 GiB",
            "measured": f"peak {peak:.0f} MiB (idle {service['idle_rss_mib']:.0f} MiB)",
            "met": peak <= 1024,
        }
    )
    return targets


def time_breakdown(report: dict) -> list[str]:
    """Where a request's time goes, from the service's histograms and the micro-measurement."""
    service = _server(report, "service")
    if service is None:
        return []
    pre = report["preprocessing_ms_per_image"]
    lines = [
        "| concurrency | client p50 | server mean | preprocess/image in the server | queue wait | "
        "inference/batch (mean size) | decode | resize+crop | normalise | serialise |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in service["levels"]:
        lines.append(
            f"| {row['concurrency']} | {row['p50_ms']:.0f} ms | "
            f"{row.get('mean_server_request_ms', float('nan')):.0f}"
            f" ms | {row.get('mean_preprocess_ms_per_image', float('nan')):.1f} ms"
            f" | {row.get('mean_queue_wait_ms', float('nan')):.0f} ms | "
            f"{row.get('mean_inference_ms_per_batch', float('nan')):.0f} ms "
            f"({row.get('mean_batch_size', '-')}) | "
            f"{pre['decode']:.1f} ms | {pre['resize_crop']:.1f} ms | {pre['normalize']:.2f} ms | "
            f"{pre['serialize']:.2f} ms |"
        )
    lines += [
        "",
        "The last four columns are measured alone, single-threaded, in the benchmark process; "
        "`preprocess/image in the server` is the service's own `transxnet_preprocess_seconds` under "
        "that load level, where decoding shares the cores with inference.",
    ]
    return lines


def bounds_text(report: dict) -> list[str]:
    """What limits throughput, read off the numbers (not asserted: printed for the reader)."""
    service = _server(report, "service")
    if service is None:
        return []
    pre = report["preprocessing_ms_per_image"]
    pre_ms = pre["decode"] + pre["resize_crop"] + pre["normalize"] + pre["serialize"]
    best_bs, best = best_batch(report["ceiling"])
    model_ms = 1000.0 / best["images_per_s"]
    cores = report["machine"]["cpus"]
    serial = 1000.0 / (model_ms + pre_ms)
    lines = [
        f"- Model: {model_ms:.1f} ms of CPU-bound compute per image at its best batch size ({best_bs}), "
        f"using all {cores} cores through ORT's intra-op pool; preprocessing + serialisation: "
        f"{pre_ms:.1f} ms per image "
        "on one core (mean over the corpus).",
        f"- If nothing overlapped, one image would cost {model_ms + pre_ms:.1f} ms: {serial:.1f} img/s. "
        f"The ceiling ({best['images_per_s']:.1f} img/s) is reachable only when decoding hides behind "
        f"inference, which on {cores} cores means taking cycles from ORT's threads: the sum, not the max, "
        "bounds it when ORT already "
        "uses every core.",
    ]
    c16 = level_row(service, 16)
    if c16:
        lines.append(
            f"- At c=16 the server used {c16['server_cpu_percent']:.0f}% CPU of {100 * cores}%: "
            + (
                "CPU-bound (the cores are the limit, not the batcher or HTTP)."
                if c16["server_cpu_percent"] >= 85 * cores
                else "below saturation: either the machine is shared (check the load average above) or "
                "something serialises (queue delay, GIL-held work, the client)."
            )
        )
    return lines


def _servers_markdown(report: dict) -> list[str]:
    lines = [
        f"# Service benchmark ({report['mode']})",
        "",
        f"{report['machine']['model']}: {report['machine']['cpus']} CPUs, {report['machine']['platform']}, "
        f"load average before the run {report['machine']['loadavg_before']}, after "
        f"{report['machine'].get('loadavg_after', '?')}. Model `{report['model']}`. "
        f"{report['requests_per_level']} one-JPEG multipart requests per level "
        "(at least 2x the concurrency), "
        f"corpus `{report['corpus']['name']}`: {report['corpus']['images']} JPEGs, longer side "
        f"{report['corpus']['sides']} px, {report['corpus']['mean_kib']:.0f} KiB mean.",
        "",
        "| server | concurrency | img/s | p50 ms | p90 ms | p99 ms | errors | mean batch | server CPU % "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server in report["servers"]:
        for row in server["levels"]:
            errors = sum(row["errors"].values()) + row["transport_errors"]
            lines.append(
                f"| {server['name']} | {row['concurrency']} | {row['throughput_img_s']:.1f} | "
                f"{row['p50_ms']:.0f} | "
                f"{row['p90_ms']:.0f} | {row['p99_ms']:.0f} | {errors} | {row.get('mean_batch_size', '-')} | "
                f"{row['server_cpu_percent']:.0f} | {row['server_peak_rss_mib']:.0f} |"
            )
    return lines


def _ceiling_and_batches_markdown(report: dict) -> list[str]:
    lines = ["", "## Raw ONNX Runtime (the ceiling)", "", "| batch | img/s | batch p50 ms |", "|---|---|---|"]
    for size, row in report["ceiling"]["batch_sizes"].items():
        lines.append(f"| {size} | {row['images_per_s']:.1f} | {row['batch_ms_p50']:.1f} |")
    lines += [
        "",
        "## Batch sizes the service formed",
        "",
        "| server | concurrency | batches | histogram |",
        "|---|---|---|---|",
    ]
    for server in report["servers"]:
        for row in server["levels"]:
            if "batch_size_histogram" in row:
                lines.append(
                    f"| {server['name']} | {row['concurrency']} | {row['batches']} | "
                    f"{row['batch_size_histogram']} |"
                )
    return lines


def _preprocessing_and_targets_markdown(report: dict) -> list[str]:
    lines = [
        "",
        "## Preprocessing per image (single-threaded, on the corpus)",
        "",
        "| decoding | decode | resize+crop | normalise | serialise | total |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (
        ("pixel-exact (default)", "preprocessing_ms_per_image"),
        ("JPEG_REDUCING_GAP=2", "preprocessing_reduced_ms_per_image"),
    ):
        if key in report:
            pre = report[key]
            lines.append(
                f"| {label} | {pre['decode']:.2f} ms | {pre['resize_crop']:.2f} ms | "
                f"{pre['normalize']:.2f} ms | {pre['serialize']:.2f} ms | {sum(pre.values()):.2f} ms |"
            )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target in report["targets"]:
        lines.append(f"| {target['target']} | {target['measured']} | {'yes' if target['met'] else 'NO'} |")
    return [
        *lines,
        "",
        "## Where the time goes (service)",
        "",
        *time_breakdown(report),
        "",
        *bounds_text(report),
    ]


def _sweep_markdown(report: dict) -> list[str]:
    if not report.get("sweep"):
        return []
    lines = [
        "",
        "## Settings sweep (service)",
        "",
        "| settings | c | img/s | p50 ms | p99 ms | mean batch |",
        "|---|---|---|---|---|---|",
    ]
    for server in report["sweep"]:
        for row in server["levels"]:
            lines.append(
                f"| {server['name']} | {row['concurrency']} | {row['throughput_img_s']:.1f} | "
                f"{row['p50_ms']:.0f} |"
                f" {row['p99_ms']:.0f} | {row.get('mean_batch_size', '-')} |"
            )
    return lines


def markdown(report: dict) -> str:
    lines = [
        *_servers_markdown(report),
        *_ceiling_and_batches_markdown(report),
        *_preprocessing_and_targets_markdown(report),
        *_sweep_markdown(report),
        *transports_markdown(report),
        "",
        "LitServe: " + LITSERVE_CONFIG,
        "",
    ]
    return "\n".join(lines)


def transports_markdown(report: dict) -> list[str]:
    if not report.get("transports"):
        return []
    lines = [
        "",
        "## Transports (the service, gRPC on, the same images, top-5 answers)",
        "",
        "| transport | c | img/s | p50 ms | p90 ms | p99 ms | refused | mean batch | server CPU % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for transport in report["transports"]:
        for row in transport["levels"]:
            lines.append(
                f"| {transport['name']} | {row['concurrency']} | {row['throughput_img_s']:.1f} | "
                f"{row['p50_ms']:.0f} | {row['p90_ms']:.0f} | {row['p99_ms']:.0f} | "
                f"{sum(row['refused'].values())} | {row.get('mean_batch_size', '-')} | "
                f"{row['server_cpu_percent']:.0f} |"
            )
    lines += [
        "",
        "`classify`: multipart POST /classify; `v2-http`: /v2 infer with binary tensor data; `v2-grpc`: "
        "ModelInfer over one HTTP/2 channel. Each level runs the three back to back (see "
        "benchmarks/transports.py).",
    ]
    return lines


LITSERVE_CONFIG = (
    "`LitServer(accelerator='cpu', devices=1, workers_per_device=1, timeout=120)`, one API server, "
    "`LitAPI(max_batch_size=16, batch_timeout=0.005)` (the service's defaults), the same ORT session "
    "options and `ImagePreprocessor`; decoding runs in its inference worker (LitServe's design)."
)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server in report["servers"]:
        xs = [row["concurrency"] for row in server["levels"]]
        left.plot(xs, [row["throughput_img_s"] for row in server["levels"]], marker="o", label=server["name"])
        right.plot(xs, [row["p99_ms"] for row in server["levels"]], marker="o", label=server["name"])
    best = max(row["images_per_s"] for row in report["ceiling"]["batch_sizes"].values())
    left.axhline(best, color="grey", linestyle="--", label="raw ORT (best batch)")
    for axis, title, unit in ((left, "Throughput", "images/s"), (right, "p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_ylabel(unit)
        axis.set_title(f"{title} ({report['mode']}, {report['machine']['cpus']} CPUs)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    left.set_ylim(bottom=0)  # differences of a few percent must not look like factors
    right.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_transports(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for transport in report["transports"]:
        xs = [row["concurrency"] for row in transport["levels"]]
        left.plot(
            xs, [row["throughput_img_s"] for row in transport["levels"]], marker="o", label=transport["name"]
        )
        right.plot(xs, [row["p99_ms"] for row in transport["levels"]], marker="o", label=transport["name"])
    for axis, title, unit in ((left, "Throughput", "images/s"), (right, "p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_ylabel(unit)
        axis.set_title(f"{title} by transport ({report['mode']}, {report['machine']['cpus']} CPUs)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    left.set_ylim(bottom=0)
    right.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


SWEEP: tuple[tuple[str, dict[str, str]], ...] = (
    ("intra_op=1", {"TRANSXNET_INTRA_OP_THREADS": "1"}),
    ("intra_op=2", {"TRANSXNET_INTRA_OP_THREADS": "2"}),
    ("preprocess_workers=1", {"TRANSXNET_PREPROCESS_WORKERS": "1"}),
    ("wait=always", {"TRANSXNET_BATCH_WAIT": "always"}),
    ("delay=20ms", {"TRANSXNET_MAX_BATCH_DELAY_MS": "20"}),
    ("max_batch=4", {"TRANSXNET_MAX_BATCH_SIZE": "4"}),
    ("jpeg_reducing_gap=2", {"TRANSXNET_JPEG_REDUCING_GAP": "2.0"}),
)


def ensure_model(model: Path) -> Path:
    if model.is_file():
        return model
    print(f"{model} is missing: exporting TransXNet-T (seeded weights; ~1-2 min, needs the export extra)")
    model.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "export", "--variant", "t", "--output", str(model), "-q"], cwd=ROOT, check=True
    )
    return model


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the service against raw ORT and LitServe.")
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="exported ONNX (exported if missing)"
    )
    parser.add_argument("--quick", action="store_true", help="few requests, short ceiling, no sweep")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=None, help="per level (default 240, quick 32)")
    parser.add_argument(
        "--servers", default="service,service-nobatch,litserve", help=f"from {', '.join(SERVER_SPECS)}"
    )
    parser.add_argument(
        "--corpus",
        choices=sorted(CORPORA),
        default="web",
        help="web: photos at 256-1024 px (default); phone: 4032 px uploads, where decoding dominates",
    )
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="settings sweep (default on in full runs)",
    )
    parser.add_argument(
        "--transports", default="", help=f"also load the service over these, from {', '.join(TRANSPORTS)}"
    )
    parser.add_argument("--transport-concurrency", default="1,16,64")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    unknown = [name for name in args.servers.split(",") if name and name not in SERVER_SPECS]
    if unknown:
        parser.error(f"unknown --servers {unknown}: choose from {', '.join(SERVER_SPECS)}")
    args.transport_list = [name for name in args.transports.split(",") if name]
    if set(args.transport_list) - set(TRANSPORTS):
        parser.error(
            f"unknown --transports {sorted(set(args.transport_list) - set(TRANSPORTS))}: "
            f"choose from {TRANSPORTS}"
        )
    return args


def run_servers(report: dict, args: argparse.Namespace, model: Path, blobs: list[bytes]) -> None:
    """The servers, the transports and the sweep, each in fresh processes, into `report`."""
    levels = [int(c) for c in args.concurrency.split(",") if c]
    requests = report["requests_per_level"]
    warmup = 8 if args.quick else WARMUP_REQUESTS
    sweep = (not args.quick) if args.sweep is None else args.sweep
    transports = args.transport_list
    report["servers"] = []
    for name in filter(None, args.servers.split(",")):
        print(f"{name}:", flush=True)
        report["servers"].append(bench_server(SERVER_SPECS[name], model, blobs, levels, requests, warmup))
    report["transports"] = []
    if transports:
        print("transports:", flush=True)
        transport_levels = [int(c) for c in args.transport_concurrency.split(",") if c]
        report["transports"] = bench_transports(model, blobs, transports, transport_levels, requests, warmup)
    report["sweep"] = []
    if sweep:
        sweep_levels = [c for c in levels if c in (1, 16)] or levels[:1]
        print("settings sweep:", flush=True)
        for name, env in SWEEP:
            spec = ServerSpec(name, "service", tuple(env.items()))
            report["sweep"].append(bench_server(spec, model, blobs, sweep_levels, requests, warmup))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model = ensure_model(args.model.resolve())
    requests = args.requests or (32 if args.quick else 240)
    mode = "quick" if args.quick else "full"
    loadavg = os.getloadavg()
    if loadavg[0] > 0.5:
        print(f"WARNING: load average {loadavg[0]:.2f} before the run: numbers will be noisy", flush=True)

    blobs = jpeg_corpus(CORPORA[args.corpus])
    report: dict = {
        "mode": mode,
        "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
        "machine": {
            "cpus": os.cpu_count(),
            "model": platform.processor() or platform.machine(),
            "platform": platform.platform(terse=True),
            "loadavg_before": [round(x, 2) for x in loadavg],
        },
        "requests_per_level": requests,
        "corpus": {
            "name": args.corpus,
            "sides": list(CORPORA[args.corpus]),
            "images": len(blobs),
            "mean_kib": float(np.mean([len(b) for b in blobs]) / 1024),
        },
    }
    print("measuring preprocessing and the raw ORT ceiling ...", flush=True)
    repeats = 1 if args.quick else 3
    report["preprocessing_ms_per_image"] = measure_preprocessing(model, blobs, repeats)
    report["preprocessing_reduced_ms_per_image"] = measure_preprocessing(
        model, blobs, repeats, jpeg_reducing_gap=2.0
    )
    ceiling_sizes = [1, 4, 16] if args.quick else [1, 2, 4, 8, 16]
    report["ceiling"] = measure_ceiling(model, ceiling_sizes, 2.0 if args.quick else 6.0, intra_op=0)
    for size, row in report["ceiling"]["batch_sizes"].items():
        print(
            f"  raw ORT batch {size:>2}: {row['images_per_s']:6.1f} img/s "
            f"({row['batch_ms_p50']:.0f} ms/batch)"
        )

    run_servers(report, args, model, blobs)
    # Other work starting mid-run shows here even when the machine was quiet at the start.
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = evaluate_targets(report)
    report["litserve_config"] = LITSERVE_CONFIG

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (
        "service_bench"
        + ("_quick" if args.quick else "")
        + ("" if args.corpus == "web" else f"_{args.corpus}")
    )
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    plot(report, stem.with_suffix(".png"))
    if report["transports"]:
        plot_transports(report, stem.parent / f"{stem.name}_transports.png")
    print("\n" + text)
    print(f"wrote {stem}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
