"""ONNX Runtime's CUDA provider on the exported TransXNet-T: parity and model throughput.

    python -m benchmarks.gpu_ort parity     --fp32 T.onnx --fp16 T16.onnx --results R.json --budget 60
    python -m benchmarks.gpu_ort throughput --fp32 T.onnx --fp16 T16.onnx --results R.json --budget 120
    ... --smoke   (CPU provider, batch 1-2, a few runs: checks the code, measures nothing)

`parity`: the CUDA provider (the service's own session options, `runtime.session.create_session`)
against CPU ONNX Runtime on fresh inputs and against the official implementation's stored outputs
(`tests/fixtures/reference/expected_t.npz`, its two samples tiled to the batch), at batch 1, 8 and
64: fp32 at most 1e-4 relative on every output, the fp16 export at most 1e-2 on the logits with the
same top-1. If fp32 misses with the provider's defaults, it is repeated with TF32 off
(`use_tf32=0`), because TF32 matmuls alone are ~1e-3 off in float32.

`throughput`: images/s per batch (1..256), logits only, in blocks of falling importance, each with
its own share of the budget: fp16 and fp32 on the service's session (cold first run = cuDNN's
exhaustive algorithm search for that shape; then IOBinding with device buffers, and `session.run` on
numpy as the service calls it, host copies included), the same with ORT's CUDA graphs (one graph
per batch size: `gpu_graph_id`, fixed buffers), and the cuDNN search modes (the cold cost per new
batch size matters to a dynamic batcher). Each point is written to the results file at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_common import (  # noqa: E402
    EXPECTED_T,
    GPU_BATCHES,
    SMOKE_BATCHES,
    Deadline,
    ResultsFile,
    log,
    throughput_row,
    time_calls,
)

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
PARITY_BATCHES = (1, 8, 64)
OUTPUTS = ("logits", "pooled", "stage1", "stage2", "stage3", "stage4")


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref|| / ||ref|| in float64 over the whole tensor (NaN stays NaN: never a pass)."""
    ref64 = ref.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - ref64) / max(np.linalg.norm(ref64), 1e-30))


def tiled(array: np.ndarray, batch: int) -> np.ndarray:
    """The stored samples repeated along the batch axis to `batch` rows (1: the first sample)."""
    reps = -(-batch // array.shape[0])
    return np.concatenate([array] * reps, axis=0)[:batch]


# ------------------------------------------------------------------------------------------ sessions
def _provider(smoke: bool) -> str:
    return "cpu" if smoke else "cuda"


def service_session(path: Path, smoke: bool, max_batch: int = 256):
    """The session exactly as the service creates it (`runtime.session.create_session`)."""
    from runtime.session import create_session

    return create_session(path, providers=_provider(smoke), max_batch_size=max_batch).session


def custom_cuda_session(path: Path, smoke: bool, **cuda_options: str):
    """The service's session and CUDA options with `cuda_options` on top (CUDA graphs, TF32, search).

    Under --smoke the CPU provider stands in (CUDA options dropped) so the code path still runs.
    """
    import onnxruntime as ort

    from runtime.session import cuda_provider_options, session_options

    options = session_options()
    if smoke:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    provider_options = {**cuda_provider_options(), **cuda_options}
    session = ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        provider_options=[provider_options, {}],
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"CUDA provider did not initialise: {session.get_providers()}")
    return session


def provider_options_in_effect(session) -> dict:
    """What ORT actually applied (use_tf32, cudnn_conv_algo_search, enable_cuda_graph, ...)."""
    try:
        return {k: dict(v) for k, v in session.get_provider_options().items()}
    except Exception as exc:  # older builds lack it; the record says so instead of failing the stage
        return {"error": f"{type(exc).__name__}: {exc}"}


# -------------------------------------------------------------------------------------------- parity
def _compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], fp16: bool) -> dict[str, object]:
    errors = {name: relative_error(got[name], ref[name]) for name in OUTPUTS if name in ref}
    top1 = float(np.mean(got["logits"].argmax(1) == ref["logits"].argmax(1)))
    if fp16:
        ok = errors["logits"] <= FP16_TOLERANCE and top1 == 1.0
    else:
        ok = all(np.isfinite(e) and e <= FP32_TOLERANCE for e in errors.values())
    worst = max(errors, key=lambda name: errors[name])
    return {"rel_error": errors, "worst": worst, "top1_agreement": top1, "ok": bool(ok)}


def _run_all(session, x: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": x}), strict=True))


def parity_for(
    session, cpu_fp32, label: str, fp16: bool, batches: Sequence[int], results: ResultsFile
) -> bool:
    """One session against CPU fp32 (fresh inputs) and the official outputs (tiled) at `batches`."""
    official = dict(np.load(EXPECTED_T))
    all_ok = True
    for batch in batches:
        x = np.random.default_rng(1000 + batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        vs_cpu = _compare(_run_all(session, x), _run_all(cpu_fp32, x), fp16)
        x_official = tiled(official["inputs"], batch)
        ref_official = {name: tiled(official[name], batch) for name in OUTPUTS if name in official}
        vs_official = _compare(_run_all(session, x_official), ref_official, fp16)
        row = {
            "vs_cpu_ort_fp32": vs_cpu,
            "vs_official": vs_official,
            "ok": vs_cpu["ok"] and vs_official["ok"],
        }
        results.put(["parity", label, str(batch)], row)
        worst = vs_cpu["worst"]
        log(
            f"parity {label} b{batch}: logits vs CPU {vs_cpu['rel_error']['logits']:.2e} (worst {worst} "
            f"{vs_cpu['rel_error'][worst]:.2e}), vs official {vs_official['rel_error']['logits']:.2e}, "
            f"top-1 {vs_cpu['top1_agreement']:.2f} -> {'ok' if row['ok'] else 'FAIL'}"
        )
        all_ok &= row["ok"]
    return all_ok


def _parity_session(label: str, make, cpu_fp32, fp16: bool, batches, results: ResultsFile) -> bool:
    """Create one session and compare it; a session that cannot be created is a recorded failure."""
    try:
        session = make()
    except Exception as exc:
        results.put(["parity", label, "error"], f"{type(exc).__name__}: {exc}"[:1500])
        log(f"parity {label}: session FAILED: {type(exc).__name__}: {exc}")
        return False
    results.put(["parity", label, "providers"], session.get_providers())
    results.put(["parity", label, "provider_options"], provider_options_in_effect(session))
    return parity_for(session, cpu_fp32, label, fp16, batches, results)


def run_parity(args: argparse.Namespace, results: ResultsFile) -> int:
    deadline = Deadline(args.budget)
    batches = SMOKE_BATCHES if args.smoke else PARITY_BATCHES
    from runtime.session import create_session

    cpu_fp32 = create_session(args.fp32, providers="cpu").session
    verdicts: dict[str, bool] = {}
    for label, path, fp16 in (("fp32", args.fp32, False), ("fp16", args.fp16, True)):
        if deadline.expired():
            break
        make = lambda path=path: service_session(path, args.smoke)  # noqa: E731
        verdicts[label] = _parity_session(label, make, cpu_fp32, fp16, batches, results)
    # TF32 matmuls alone are ~1e-3 off in float32: if fp32 missed, say whether TF32 is why.
    # (--smoke runs this branch too, so the code path is checked before it is needed.)
    if (not verdicts.get("fp32", True) or args.smoke) and not deadline.expired():
        log("fp32 with TF32 off (use_tf32=0)")
        make = lambda: custom_cuda_session(args.fp32, args.smoke, use_tf32="0")  # noqa: E731
        verdicts["fp32_no_tf32"] = _parity_session("fp32_no_tf32", make, cpu_fp32, False, batches, results)
    results.put(["parity", "verdicts"], verdicts)
    return 0 if verdicts and all(verdicts.get(k, False) for k in ("fp32", "fp16")) else 1


# ---------------------------------------------------------------------------------------- throughput
class Bound:
    """A batch's input and logits output bound to device buffers (fixed addresses: CUDA graphs)."""

    def __init__(self, session, batch: int, device: str) -> None:
        import onnxruntime as ort

        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        self.host_input = x
        self.input = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type([batch, 1000], np.float32, device, 0)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input("images", self.input)
        self.binding.bind_ortvalue_output("logits", self.output)


def _time_point(
    session, batch: int, device: str, seconds: float, *, graph: bool, with_run: bool
) -> dict[str, object]:
    import onnxruntime as ort

    bound = Bound(session, batch, device)
    run_options = ort.RunOptions()
    if graph:
        run_options.add_run_config_entry("gpu_graph_id", str(batch))
    t0 = time.perf_counter()
    session.run_with_iobinding(bound.binding, run_options)
    cold_ms = 1e3 * (time.perf_counter() - t0)
    quick = seconds < 0.1  # --smoke: prove the path, measure nothing
    timing = time_calls(
        lambda: session.run_with_iobinding(bound.binding, run_options),
        seconds=seconds,
        warmup=1 if quick else 3,
        min_runs=1 if quick else 5,
    )
    row = throughput_row(
        batch, timing, cold_first_run_ms=cold_ms, mode="cuda_graph" if graph else "iobinding"
    )
    if with_run:
        run = time_calls(
            lambda: session.run(["logits"], {"images": bound.host_input}),
            seconds=seconds / 2,
            warmup=1,
            min_runs=1 if quick else 5,
        )
        row["session_run"] = throughput_row(batch, run)
    row["_bound"] = bound  # kept alive by the caller: a captured graph holds these addresses
    return row


def throughput_block(
    label: str,
    session,
    batches: Sequence[int],
    deadline: Deadline,
    results: ResultsFile,
    args: argparse.Namespace,
    *,
    graph: bool = False,
    with_run: bool = True,
) -> None:
    device = "cpu" if args.smoke else "cuda"
    per_point = 0.05 if args.smoke else args.point_seconds
    keep = []
    for index, batch in enumerate(batches):
        if deadline.expired(reserve=1.0):
            results.put(["ort_throughput", label, "skipped_for_budget"], list(batches[index:]))
            log(f"{label}: budget spent, skipping batches {list(batches[index:])}")
            return
        try:
            row = _time_point(session, batch, device, per_point, graph=graph, with_run=with_run)
        except Exception as exc:
            results.put(
                ["ort_throughput", label, str(batch)], {"error": f"{type(exc).__name__}: {exc}"[:500]}
            )
            log(f"{label} b{batch}: FAILED {type(exc).__name__}: {exc}")
            continue
        keep.append(row.pop("_bound"))
        results.put(["ort_throughput", label, str(batch)], row)
        extra = f", session.run {row['session_run']['images_per_s']:.0f}" if "session_run" in row else ""
        log(
            f"{label} b{batch}: {row['images_per_s']:.0f} img/s ({row['median_ms']:.2f} ms){extra}; "
            f"cold first run {row['cold_first_run_ms']:.0f} ms"
        )


def run_throughput(args: argparse.Namespace, results: ResultsFile) -> int:
    deadline = Deadline(args.budget)
    batches = SMOKE_BATCHES if args.smoke else tuple(args.batches)
    graph_batches = [b for b in batches if b not in {2, 4}] if not args.smoke else batches
    plan = (
        ("fp16", args.fp16, "plain", 0.26),
        ("fp16", args.fp16, "cuda_graph", 0.30),
        ("fp32", args.fp32, "plain", 0.40),
        ("fp32", args.fp32, "cuda_graph", 0.55),
    )
    for precision, path, mode, share in plan:
        if deadline.expired(reserve=2.0):
            break
        label = f"{precision}_{mode}"
        block = deadline.share(share)
        t0 = time.perf_counter()
        try:
            if mode == "plain":
                session = service_session(path, args.smoke)
            else:
                session = custom_cuda_session(path, args.smoke, enable_cuda_graph="1")
        except Exception as exc:
            results.put(["ort_throughput", label, "error"], f"{type(exc).__name__}: {exc}"[:1000])
            log(f"{label}: session creation FAILED: {exc}")
            continue
        results.put(["ort_throughput", label, "session_create_s"], time.perf_counter() - t0)
        results.put(["ort_throughput", label, "provider_options"], provider_options_in_effect(session))
        throughput_block(
            label,
            session,
            batches if mode == "plain" else graph_batches,
            block,
            results,
            args,
            graph=(mode == "cuda_graph" and not args.smoke),
            with_run=(mode == "plain"),
        )
        del session
    search_modes(args, results, deadline)
    measured = results.get(["ort_throughput"], {})
    return 0 if any(_has_rows(block) for block in measured.values()) else 1


def _has_rows(block: object) -> bool:
    return isinstance(block, dict) and any(
        key.isdigit() and isinstance(row, dict) and "images_per_s" in row for key, row in block.items()
    )


def search_modes(args: argparse.Namespace, results: ResultsFile, deadline: Deadline) -> None:
    """cuDNN's algorithm search: EXHAUSTIVE (the service's) against HEURISTIC and DEFAULT, fp32.

    A dynamic batcher meets every batch size from 1 to its max; each new size pays the search once
    per Conv node, so its cold cost is part of serving, not only of start-up.
    """
    batches = SMOKE_BATCHES[:1] if args.smoke else (8, 64)
    for mode in ("HEURISTIC", "DEFAULT"):
        if deadline.expired(reserve=3.0):
            return
        label = f"fp32_search_{mode.lower()}"
        try:
            session = custom_cuda_session(args.fp32, args.smoke, cudnn_conv_algo_search=mode)
        except Exception as exc:
            results.put(["ort_throughput", label, "error"], f"{type(exc).__name__}: {exc}"[:1000])
            continue
        throughput_block(label, session, batches, deadline.share(0.5), results, args, with_run=False)
        del session


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["parity", "throughput"])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--fp16", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds this stage may take")
    parser.add_argument("--point-seconds", type=float, default=0.4, help="timed seconds per batch point")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=list(GPU_BATCHES))
    parser.add_argument("--smoke", action="store_true", help="CPU provider, batch 1-2: checks the code only")
    args = parser.parse_args(argv)
    results = ResultsFile(args.results)
    started = time.monotonic()
    try:
        return run_parity(args, results) if args.what == "parity" else run_throughput(args, results)
    except Exception as exc:
        results.put([f"ort_{args.what}_error"], f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        results.put(["stage_seconds", f"ort_{args.what}"], time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
