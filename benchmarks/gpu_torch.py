"""PyTorch on the GPU beside ONNX Runtime: eager and torch.compile throughput, and why eager is slow.

    python -m benchmarks.gpu_torch eager   --results R.json --work DIR --budget 60 [--trace T.json.gz]
    python -m benchmarks.gpu_torch compile --results R.json --work DIR --budget 90 [--warm-only]
    ... --smoke   (CPU, batch 1-2: checks the code, measures nothing)

The model is this project's TransXNet-T in its official form (IDConv as one grouped conv with
groups = batch x channels), with the seeded reference weights the ONNX exports are made from.

`eager`: images/s per batch (synchronised forward, CUDA events beside the wall clock), and the
account of the 40-60 ms forward measured on an H100 earlier, from four independent readings:
1. static: the aten ops one forward dispatches and any that synchronise the host (`.item()`,
   `nonzero`, device-to-host copies), counted by a dispatch hook on a forward;
2. the host's time to enqueue a forward with the GPU idle (no synchronisation) against the
   synchronised time: equal means the host is the bottleneck;
3. capturing the eager forward as a CUDA graph (capture fails on any host synchronisation) and the
   replay time: the GPU's own time for the same kernels without launch overhead;
4. the profiler: kernels per forward, their summed GPU time, and the synchronising CUDA API calls;
   plus `torch.cuda.set_sync_debug_mode("warn")` over one forward.

`compile`: `torch.compile(mode="max-autotune")` (Triton autotuning and CUDA graphs), one static
shape per batch size, batches in order of importance while the budget lasts. `--warm-only` compiles
without timing: the device's staging calls run it in the background to fill the Inductor cache
(`TORCHINDUCTOR_CACHE_DIR`), so the timed run later mostly loads compiled code.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_common import (  # noqa: E402
    GPU_BATCHES,
    SMOKE_BATCHES,
    Deadline,
    ResultsFile,
    log,
    reference_checkpoint,
    throughput_row,
    time_calls,
    torch_environment,
)

COMPILE_BATCHES = (64, 256, 1, 8, 128)
ANALYSIS_BATCHES = (8, 128)
#: aten ops that make the host wait for the GPU (or read device memory on the host).
SYNCING_OPS = frozenset(
    {"item", "_local_scalar_dense", "nonzero", "equal", "is_nonzero", "unique", "masked_select"}
)


def build(device: str, dtype_name: str, work: Path):
    import torch

    from model import create_model

    net = create_model("t", checkpoint=reference_checkpoint(work)).eval().to(device)
    dtype = torch.float16 if dtype_name == "fp16" else torch.float32
    return net.to(dtype), dtype


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else None


# -------------------------------------------------------------------------------------------- eager
def count_dispatched_ops(net, x) -> dict[str, object]:
    """Aten ops one forward dispatches (each is at least one kernel launch on a GPU) and syncing ones."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with torch.inference_mode(), Counter() as counter:
        net(x)
    syncing = {op: n for op, n in counter.ops.items() if op in SYNCING_OPS}
    copies = {op: n for op, n in counter.ops.items() if op in ("_to_copy", "copy_", "to")}
    return {
        "aten_ops_per_forward": sum(counter.ops.values()),
        "top_ops": dict(counter.ops.most_common(15)),
        "syncing_ops": syncing,
        "copy_ops": copies,
    }


def eager_sweep(
    net,
    dtype,
    device: str,
    batches: Sequence[int],
    deadline: Deadline,
    results: ResultsFile,
    label: str,
    seconds: float,
) -> None:
    import torch

    for index, batch in enumerate(batches):
        if deadline.expired(reserve=1.0):
            results.put(["torch_eager", label, "skipped_for_budget"], list(batches[index:]))
            return
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)

        def forward(x=x) -> None:
            with torch.inference_mode():
                net(x)

        timing = time_calls(
            forward,
            seconds=seconds,
            sync=_sync(device),
            min_runs=3 if seconds > 0.1 else 1,
            warmup=2 if seconds > 0.1 else 1,
        )
        row = throughput_row(batch, timing, **enqueue_time(forward, device))
        results.put(["torch_eager", label, str(batch)], row)
        log(
            f"eager {label} b{batch}: {row['images_per_s']:.0f} img/s ({row['median_ms']:.1f} ms; "
            f"host enqueue {row.get('enqueue_ms', float('nan')):.1f} ms)"
        )


def enqueue_time(forward, device: str) -> dict[str, float]:
    """Host time to issue one forward with the GPU idle, without waiting for it (median of 3)."""
    if device != "cuda":
        return {}
    import torch

    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
    return {"enqueue_ms": 1e3 * sorted(times)[1]}


def graph_replay(net, x) -> dict[str, object]:
    """Capture the eager forward as one CUDA graph; capture fails on a host sync inside it."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(2):
            net(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph), torch.inference_mode():
            net(x)
    except Exception as exc:  # the answer to "does anything synchronise?" is in this message
        return {"captured": False, "error": f"{type(exc).__name__}: {exc}"[:800]}
    timing = time_calls(graph.replay, seconds=0.5, sync=torch.cuda.synchronize)
    return {"captured": True, "replay_median_ms": timing["median_ms"], "replay_runs": timing["runs"]}


def profile_forward(net, x, trace: Path | None) -> dict[str, object]:
    """Kernels per forward, their GPU time, and synchronising CUDA runtime calls (3 forwards)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    forwards = 3
    with torch.inference_mode():
        net(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(forwards):
                net(x)
            torch.cuda.synchronize()
    kernels = 0
    kernel_us = 0.0
    runtime_calls: collections.Counter[str] = collections.Counter()
    launch_cpu_us = 0.0
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            kernels += 1
            kernel_us += event.time_range.elapsed_us()
        elif event.name.startswith("cu"):
            runtime_calls[event.name] += 1
            if event.name in (
                "cudaLaunchKernel",
                "cudaLaunchKernelExC",
                "cuLaunchKernel",
                "cuLaunchKernelEx",
            ):
                launch_cpu_us += event.cpu_time_total
    if trace is not None:
        raw = trace.with_suffix("")
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as src, gzip.open(trace, "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
    syncs = {k: v // forwards for k, v in runtime_calls.items() if "Synchronize" in k or "Memcpy" in k}
    return {
        "kernels_per_forward": kernels // forwards,
        "gpu_kernel_ms_per_forward": kernel_us / forwards / 1e3,
        "launch_api_cpu_ms_per_forward": launch_cpu_us / forwards / 1e3,
        "runtime_calls_per_forward": {k: v // forwards for k, v in runtime_calls.most_common(12)},
        "sync_or_copy_calls_per_forward": syncs,
    }


def sync_debug(net, x) -> dict[str, object]:
    """`set_sync_debug_mode("warn")` over one forward: every synchronising call warns."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.inference_mode():
                net(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    messages = [str(w.message)[:200] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"sync_warnings": len(messages), "examples": messages[:5]}


def analyse(
    net, dtype, device: str, batch: int, results: ResultsFile, trace: Path | None, label: str
) -> None:
    import torch

    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    key = ["eager_analysis", label, str(batch)]
    steps = [("dispatch", lambda: count_dispatched_ops(net, x))]
    if device == "cuda":
        steps += [
            ("sync_debug", lambda: sync_debug(net, x)),
            ("cuda_graph", lambda: graph_replay(net, x)),
            ("profiler", lambda: profile_forward(net, x, trace)),
        ]
    for name, step in steps:
        try:
            value = step()
        except Exception as exc:
            value = {"error": f"{type(exc).__name__}: {exc}"[:800]}
        results.put([*key, name], value)
        log(f"analysis {label} b{batch} {name}: {value}")


def run_eager(args: argparse.Namespace, results: ResultsFile) -> int:
    import torch

    deadline = Deadline(args.budget)
    device = "cpu" if args.smoke else "cuda"
    torch.backends.cudnn.benchmark = True  # as the earlier H100 run measured it
    results.put(["torch_env"], torch_environment())
    batches = SMOKE_BATCHES if args.smoke else GPU_BATCHES
    seconds = 0.05 if args.smoke else args.point_seconds
    for label, share in (("fp32", 0.3), ("fp16", 0.45)):
        net, dtype = build(device, label, args.work)
        eager_sweep(net, dtype, device, batches, deadline.share(share), results, label, seconds)
        if label == "fp32":
            for batch in SMOKE_BATCHES[:1] if args.smoke else ANALYSIS_BATCHES:
                if deadline.expired(reserve=5.0):
                    break
                trace = args.trace if batch == ANALYSIS_BATCHES[0] else None
                analyse(net, dtype, device, batch, results, trace, label)
        del net
    return 0


# ------------------------------------------------------------------------------------------ compile
class _CudagraphLog(logging.Handler):
    """Keeps Inductor's messages about CUDA graphs (e.g. 'skipping cudagraphs due to ...')."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "cudagraph" in text.lower():
            self.messages.append(text[:300])


def _export_form(net, torch) -> object | None:
    """The same model with IDConv as batched matmuls (`set_dynamic_conv_impl("export")`), compiled."""
    if not hasattr(net, "set_dynamic_conv_impl"):
        return None
    torch._dynamo.reset()
    net.set_dynamic_conv_impl("export")
    return net


def run_compile(args: argparse.Namespace, results: ResultsFile) -> int:
    """Compile and time per batch. If Inductor cannot compile the official grouped IDConv (torch
    2.11's fails to lower a conv whose weights are computed: seen on the CPU), the error is kept and
    the exact batched-matmul form of the same model (the one the ONNX export uses) is compiled instead."""
    import torch

    deadline = Deadline(args.budget)
    device = "cpu" if args.smoke else "cuda"
    handler = _CudagraphLog()
    logging.getLogger("torch._inductor").addHandler(handler)
    batches = SMOKE_BATCHES[:1] if args.smoke else COMPILE_BATCHES
    section = "torch_compile_warm" if args.warm_only else "torch_compile"
    results.put([section, "mode"], args.mode)
    status = 0
    known = ResultsFile(args.prework).read().get("torch_compile_warm", {}) if args.prework else {}
    for label in ("fp16", "fp32") if not args.smoke else ("fp32",):
        net, dtype = build(device, label, args.work)
        form = "grouped"
        if known.get(label, {}).get("grouped_form_error") and _export_form(net, torch) is not None:
            # the background warm-up already saw the grouped form fail: do not pay for that again
            results.put([section, label, "grouped_form_error"], known[label]["grouped_form_error"])
            form = "export"
        compiled = torch.compile(net, mode=args.mode, dynamic=False)
        for index, batch in enumerate(batches):
            if deadline.expired(reserve=2.0):
                results.put([section, label, "skipped_for_budget"], list(batches[index:]))
                break
            row = compile_point(compiled, dtype, device, batch, args)
            if "error" in row and form == "grouped" and _export_form(net, torch) is not None:
                results.put([section, label, "grouped_form_error"], row["error"])
                log(
                    f"compile {label}: the grouped form failed, compiling the export form: "
                    f"{row['error'][:200]}"
                )
                form = "export"
                compiled = torch.compile(net, mode=args.mode, dynamic=False)
                row = compile_point(compiled, dtype, device, batch, args)
            row.update(form=form, cudagraph_messages=handler.messages[-5:])
            status |= int("error" in row)
            results.put([section, label, str(batch)], row)
            log(f"compile {label} b{batch} ({form} form): {row}")
        del compiled, net
        torch._dynamo.reset()
    return status


def _error_text(exc: BaseException) -> str:
    """Head and tail of a long compiler error (the tail names the model line)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 1600 else f"{text[:800]} [...] {text[-800:]}"


def compile_point(compiled, dtype, device: str, batch: int, args: argparse.Namespace) -> dict[str, object]:
    import torch

    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)

    def forward() -> None:
        with torch.inference_mode():
            compiled(x)

    t0 = time.perf_counter()
    try:
        forward()
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:
        return {"batch": batch, "error": _error_text(exc)}
    first_s = time.perf_counter() - t0
    if args.warm_only:
        forward()
        return {"batch": batch, "first_call_s": first_s}
    seconds = 0.05 if args.smoke else args.point_seconds
    quick = args.smoke
    timing = time_calls(
        forward, seconds=seconds, sync=_sync(device), warmup=1 if quick else 3, min_runs=1 if quick else 3
    )
    return throughput_row(batch, timing, first_call_s=first_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["eager", "compile"])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="where the reference checkpoint is made")
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--point-seconds", type=float, default=0.5)
    parser.add_argument("--trace", type=Path, default=None, help="profiler trace (.json.gz) of one forward")
    parser.add_argument("--mode", default="max-autotune", help="torch.compile mode")
    parser.add_argument("--warm-only", action="store_true", help="compile only (fills the Inductor cache)")
    parser.add_argument(
        "--prework", type=Path, default=None, help="the warm-up's results: skip a form it saw fail"
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, batch 1-2: checks the code only")
    args = parser.parse_args(argv)
    results = ResultsFile(args.results)
    started = time.monotonic()
    try:
        return run_eager(args, results) if args.what == "eager" else run_compile(args, results)
    except Exception as exc:
        results.put([f"torch_{args.what}_error"], f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        with contextlib.suppress(Exception):
            results.put(
                ["stage_seconds", f"torch_{args.what}" + ("_warm" if args.warm_only else "")],
                time.monotonic() - started,
            )


if __name__ == "__main__":
    sys.exit(main())
