"""The real service (`python -m app`) on ONNX Runtime's CUDA provider under a closed-loop JPEG load.

    python -m benchmarks.gpu_service --model T.onnx [--fp16-model T16.onnx] --results R.json --budget 150
    ... --smoke   (TRANSXNET_PROVIDERS=cpu, concurrency 1-2, one-second levels: checks the code)

For each service configuration (defaults first, then decode workers / max batch / delay / wait and
the request form, in order of importance while the budget lasts): start the process with
TRANSXNET_PROVIDERS=cuda, then per concurrency level run a warm-up phase (it also absorbs cuDNN's
per-batch-size algorithm search, which a dynamic batcher meets for every new size) and a measured
phase of fixed length. The load comes from several client processes (one asyncio loop each), so the
client is not the single Python loop a 16-core server could outrun; their CPU use is reported, since
they share the machine with the server.

Per level: images/s, p50/p90/p99, errors, the batch sizes the service formed (its /metrics), mean
preprocessing time per image and inference time per batch from the service's own histograms, the
share of wall time the model was running (sum of batch times / wall), server and client CPU. The
raw CUDA-provider throughput it is compared with comes from `gpu_ort throughput` in the same
results file (session.run on numpy, the service's own call, at its best batch).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_common import Deadline, ResultsFile, log  # noqa: E402

BATCH_METRIC = "transxnet_batch_size"
INFERENCE_METRIC = "transxnet_inference_seconds"
PREPROCESS_METRIC = "transxnet_preprocess_seconds"
QUEUE_METRIC = "transxnet_queue_wait_seconds"


@dataclass(frozen=True)
class Config:
    """One service configuration: TRANSXNET_* overrides, the levels to run, the request form."""

    name: str
    env: dict[str, str]
    levels: tuple[int, ...]
    raw_body: bool = False  # POST the JPEG as the body (Content-Type: image/jpeg) instead of multipart
    fp16: bool = False


def gpu_configs() -> list[Config]:
    """What a GPU box makes worth trying, most informative first (the budget decides how many run)."""
    tuned = {"TRANSXNET_PREPROCESS_WORKERS": "14", "TRANSXNET_MAX_BATCH_SIZE": "64"}
    return [
        Config("defaults", {}, (1, 16, 64, 256)),
        Config("workers14_batch64", tuned, (16, 64, 256)),
        Config("workers14_batch64_raw_body", tuned, (64, 256), raw_body=True),
        Config(
            "workers14_batch128_delay10",
            {**tuned, "TRANSXNET_MAX_BATCH_SIZE": "128", "TRANSXNET_MAX_BATCH_DELAY_MS": "10"},
            (256,),
        ),
        Config("workers8_batch64", {**tuned, "TRANSXNET_PREPROCESS_WORKERS": "8"}, (64, 256)),
        Config("workers14_batch64_fp16", tuned, (64, 256), fp16=True),
        Config("workers14_batch64_wait_always", {**tuned, "TRANSXNET_BATCH_WAIT": "always"}, (64, 256)),
        Config("workers14_batch64_jpeg_draft", {**tuned, "TRANSXNET_JPEG_REDUCING_GAP": "2.0"}, (256,)),
    ]


def smoke_configs() -> list[Config]:
    return [
        Config("defaults", {"TRANSXNET_MAX_BATCH_SIZE": "2"}, (1, 2)),
        Config("workers2_raw_body", {"TRANSXNET_PREPROCESS_WORKERS": "2"}, (2,), raw_body=True),
    ]


# ------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(model: Path, port: int, overrides: dict[str, str], smoke: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSXNET_")}
    # Keep the caller's PYTHONPATH (on the GPU machine: onnxruntime-gpu and the service's wheels).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(
        TRANSXNET_MODEL_PATH=str(model),
        TRANSXNET_PROVIDERS="cpu" if smoke else "cuda",
        TRANSXNET_HOST="127.0.0.1",
        TRANSXNET_PORT=str(port),
        TRANSXNET_GRPC_PORT="0",
        TRANSXNET_LOG_LEVEL="warning",
        TRANSXNET_MAX_QUEUE_SIZE="4096",
        TRANSXNET_REQUEST_TIMEOUT_S="120",
    )
    env.update(overrides)
    return env


@contextlib.contextmanager
def running_service(model: Path, overrides: dict[str, str], smoke: bool, timeout_s: float) -> Iterator[dict]:
    """`python -m app` until ready; yields {base, pid, startup_s, log}; SIGTERM on the way out."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_file = tempfile.NamedTemporaryFile("w+", prefix="gpu-service-", suffix=".log", delete=False)  # noqa: SIM115
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=server_env(model, port, overrides, smoke),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info = {"base": base, "pid": process.pid, "log": log_file.name}
    try:
        while True:
            if process.poll() is not None:
                log_file.seek(0)
                raise RuntimeError(
                    f"the service exited with {process.returncode}:\n{log_file.read()[-3000:]}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the service was not ready after {timeout_s:.0f} s")
            time.sleep(0.25)
        info["startup_s"] = time.monotonic() - started
        info["readyz"] = httpx.get(f"{base}/readyz", timeout=5).json()
        yield info
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log_file.seek(0)
        info["log_tail"] = log_file.read()[-1500:]
        log_file.close()
        os.unlink(log_file.name)


# ------------------------------------------------------------------------------------------- client
@dataclass
class ClientResult:
    """One client process's share of a level, over the measured window only."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    cpu_s: float = 0.0


async def _client_loop(
    url: str, blobs: Sequence[bytes], concurrency: int, window: tuple[float, float], raw_body: bool, seed: int
) -> ClientResult:
    import httpx

    result = ClientResult()
    measure_from, until = window
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def worker(index: int) -> None:
            n = seed * 7919 + index
            while time.time() < until:
                blob = blobs[n % len(blobs)]
                n += concurrency
                started = time.time()
                try:
                    if raw_body:
                        response = await client.post(
                            url, content=blob, headers={"Content-Type": "image/jpeg"}
                        )
                    else:
                        response = await client.post(url, files={"file": (f"{n}.jpg", blob, "image/jpeg")})
                except httpx.TransportError:
                    if started >= measure_from:
                        result.transport_errors += 1
                    continue
                finished = time.time()
                if started >= measure_from and finished <= until:
                    result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
                    if response.status_code == 200:
                        result.latencies_s.append(finished - started)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return result


def _client_process(args: tuple) -> ClientResult:
    url, blobs, concurrency, window, raw_body, seed = args
    cpu0 = time.process_time()
    result = asyncio.run(_client_loop(url, blobs, concurrency, window, raw_body, seed))
    result.cpu_s = time.process_time() - cpu0
    return result


def drive(
    url: str,
    blobs: Sequence[bytes],
    concurrency: int,
    window: tuple[float, float],
    raw_body: bool,
    procs: int,
) -> list[ClientResult]:
    """Closed loop of `concurrency` requests in flight from up to `procs` processes until the end of
    `window` (wall-clock start, end of the measured part; before it is warm-up)."""
    n = max(1, min(procs, concurrency))
    shares = [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]
    # spawn, not fork: the parent runs sampler and scraper threads, which fork() must not copy
    context = multiprocessing.get_context("spawn")
    with context.Pool(n) as pool:
        pending = pool.map_async(
            _client_process, [(url, blobs, c, window, raw_body, i) for i, c in enumerate(shares)]
        )
        return pending.get(timeout=window[1] - time.time() + 150)


# -------------------------------------------------------------------------------------------- levels
def _metrics_diff(before: dict, after: dict) -> dict[str, object]:
    from benchmarks.loadgen import Histogram

    row: dict[str, object] = {}
    empty = Histogram({}, 0.0, 0.0)
    if BATCH_METRIC in after:
        batches = after[BATCH_METRIC] - before.get(BATCH_METRIC, empty)
        row["batches"] = int(batches.count)
        row["mean_batch_size"] = round(batches.mean, 2) if batches.count else None
        row["batch_size_histogram"] = {
            f"<={int(le)}": int(n) for le, n in batches.per_bucket().items() if n and le != float("inf")
        }
    for key, metric in (
        ("inference", INFERENCE_METRIC),
        ("preprocess", PREPROCESS_METRIC),
        ("queue_wait", QUEUE_METRIC),
    ):
        if metric in after:
            diff = after[metric] - before.get(metric, empty)
            row[f"{key}_sum_s"] = diff.sum
            row[f"{key}_mean_ms"] = 1e3 * diff.mean if diff.count else None
    return row


def run_level(
    info: dict, config: Config, concurrency: int, blobs: Sequence[bytes], args: argparse.Namespace
) -> dict:
    from benchmarks.loadgen import ProcessSampler, scrape_histograms

    base = info["base"]
    warm_s, measure_s = (0.5, 1.0) if args.smoke else (args.warm_seconds, args.measure_seconds)
    sampler = ProcessSampler(info["pid"], interval_s=0.25)
    holder: dict = {}

    def scrape_at(when: float, key: str) -> None:
        time.sleep(max(0.0, when - time.time()))
        holder[key] = scrape_histograms(base)

    start = time.time() + 0.3 + warm_s
    window = (start, start + measure_s)
    # The service's histograms are read at the window's two ends, not when the clients are done
    # (their last requests finish after it), so they cover the same seconds as the throughput.
    scrapers = [
        threading.Thread(target=scrape_at, args=(when, key), daemon=True)
        for when, key in ((window[0], "before"), (window[1], "after"))
    ]
    for scraper in scrapers:
        scraper.start()
    with sampler:
        results = drive(f"{base}/classify", blobs, concurrency, window, config.raw_body, args.client_procs)
    for scraper in scrapers:
        scraper.join(timeout=10)
    t0, t1 = window
    latencies = np.asarray([x for r in results for x in r.latencies_s]) * 1e3
    statuses: dict[int, int] = {}
    for r in results:
        for code, n in r.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
    wall = t1 - t0
    row: dict[str, object] = {
        "concurrency": concurrency,
        "measured_s": wall,
        "ok": statuses.get(200, 0),
        "errors": {str(k): v for k, v in statuses.items() if k != 200},
        "transport_errors": sum(r.transport_errors for r in results),
        "throughput_img_s": statuses.get(200, 0) / wall,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
        "p90_ms": float(np.percentile(latencies, 90)) if latencies.size else None,
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else None,
        "server_cpu_percent": sampler.mean_cpu,
        "server_peak_rss_mib": sampler.peak_rss / 2**20,
        # the clients' CPU over their whole run (warm-up included): what they took from the server
        "client_cpu_percent": 100.0 * sum(r.cpu_s for r in results) / (wall + warm_s + 0.3),
        "client_processes": len(results),
    }
    row.update(_metrics_diff(holder.get("before", {}), holder.get("after", {})))
    if row.get("inference_sum_s") is not None:
        row["model_busy_fraction"] = float(row["inference_sum_s"]) / wall
    return row


def run_config(
    config: Config, model: Path, blobs: Sequence[bytes], args: argparse.Namespace, results: ResultsFile
) -> None:
    key = ["service", "configs", config.name]
    results.put([*key, "env"], config.env)
    results.put([*key, "request"], "raw JPEG body" if config.raw_body else "multipart file")
    results.put([*key, "model"], str(model))
    with running_service(model, config.env, args.smoke, timeout_s=args.ready_timeout) as info:
        results.put([*key, "startup_s"], info["startup_s"])
        results.put([*key, "readyz"], info.get("readyz"))
        log(f"service {config.name}: ready in {info['startup_s']:.1f} s")
        for concurrency in config.levels:
            row = run_level(info, config, concurrency, blobs, args)
            results.put([*key, "levels", str(concurrency)], row)
            log(
                f"service {config.name} c={concurrency}: {row['throughput_img_s']:.0f} img/s, p50 "
                f"{row['p50_ms'] or float('nan'):.0f} p99 {row['p99_ms'] or float('nan'):.0f} ms, batch "
                f"{row.get('mean_batch_size')}, model busy {row.get('model_busy_fraction', 0.0):.0%}, "
                f"server CPU {row['server_cpu_percent']:.0f}%, client CPU {row['client_cpu_percent']:.0f}%"
            )
    results.put([*key, "log_tail"], info.get("log_tail", ""))


def decode_cost(model: Path, blobs: Sequence[bytes]) -> dict[str, object]:
    """Single-threaded per-image CPU cost outside the model, with the service's own preprocessor."""
    try:
        from benchmarks.service_bench import measure_preprocessing

        return {
            "source": "benchmarks.service_bench.measure_preprocessing",
            **measure_preprocessing(model, blobs, 1),
        }
    except Exception as exc:  # the app is being restructured: say so rather than guess
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="fp32 export")
    parser.add_argument("--fp16-model", type=Path, default=None, help="fp16 export (for the fp16 config)")
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=150.0)
    parser.add_argument("--warm-seconds", type=float, default=4.0)
    parser.add_argument("--measure-seconds", type=float, default=6.0)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument(
        "--configs", default=None, help="comma-separated config names (default: all, in order)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="CPU provider, tiny levels: checks the code only"
    )
    args = parser.parse_args(argv)
    results = ResultsFile(args.results)
    deadline = Deadline(args.budget)
    started = time.monotonic()
    from benchmarks.loadgen import CORPUS_SIDES, jpeg_corpus

    blobs = jpeg_corpus(CORPUS_SIDES)
    results.put(
        ["service", "corpus"],
        {
            "images": len(blobs),
            "sides": list(CORPUS_SIDES),
            "mean_kib": float(np.mean([len(b) for b in blobs]) / 1024),
        },
    )
    results.put(["service", "decode_cost_ms_per_image"], decode_cost(args.model, blobs))
    configs = smoke_configs() if args.smoke else gpu_configs()
    if args.configs:
        wanted = args.configs.split(",")
        configs = [c for c in configs if c.name in wanted]
    startup_estimate = 10.0 if args.smoke else 40.0
    status = 0
    for config in configs:
        model = args.fp16_model if config.fp16 else args.model
        if model is None:
            continue
        level_s = (1.5 if args.smoke else args.warm_seconds + args.measure_seconds + 1.5) * len(config.levels)
        if deadline.left() < startup_estimate + level_s:
            results.put(
                ["service", "skipped_for_budget"],
                [*results.get(["service", "skipped_for_budget"], []), config.name],
            )
            log(f"service {config.name}: skipped, {deadline.left():.0f} s left")
            continue
        t0 = time.monotonic()
        args.ready_timeout = min(args.ready_timeout, max(10.0, deadline.left() - level_s))
        try:
            run_config(config, model, blobs, args, results)
        except Exception as exc:
            results.put(["service", "configs", config.name, "error"], f"{type(exc).__name__}: {exc}"[:3000])
            log(f"service {config.name}: FAILED {type(exc).__name__}: {exc}")
            status = 1
        startup_estimate = max(
            startup_estimate, results.get(["service", "configs", config.name, "startup_s"], 0) + 5
        )
        results.put(["service", "configs", config.name, "config_seconds"], time.monotonic() - t0)
    results.put(["stage_seconds", "service"], time.monotonic() - started)
    return status


if __name__ == "__main__":
    sys.exit(main())
