"""The exported file on ONNX Runtime against what a user would run instead: same weights, same input.

Candidates (each measurement is one fresh process running one framework with the same thread count,
so no two thread pools ever share a process or a measurement):

- `onnxruntime`: the file `python -m export` writes (this project's pipeline, verified), on ONNX
  Runtime's CPU provider with the service's session options (`runtime.session.session_options`);
- `eager`: this project's PyTorch model, official IDConv form, `torch.inference_mode`;
- `compile`: the same model through `torch.compile` (inductor; weights frozen, as PyTorch
  recommends for CPU inference, unless `--no-freezing`);
- `openvino`: OpenVINO's CPU runtime on the same ONNX file (fp32 forced: on CPUs with AMX or
  AVX512-BF16 it would otherwise run bf16; latency hint, one stream).

Candidates are interleaved within each round, the order alternates between rounds, and every
(candidate, batch) is measured in several rounds, because on a shared machine the same run varies by
1.5x: only medians over rounds, and ratios between candidates measured side by side, mean anything.
Each worker also returns its logits, and the driver checks every candidate computed the same
function as eager PyTorch (a fast wrong configuration, e.g. bf16, would be caught here).

    python -m benchmarks.model_bench                                  # the published table
    python -m benchmarks.model_bench --rounds 1 --seconds 1 --batches 1 --out-dir /tmp/smoke
    python -m benchmarks.model_bench --candidates onnxruntime --onnx base=a.onnx --onnx new=b.onnx

Weights are the seeded reference checkpoint (`tests/fixtures/reference/make_checkpoint.py`, seed
0) unless `--random-init`: realistic magnitudes (LayerScale 0.2-0.6), the same in every framework.
Results go to `benchmarks/results/model_<variant>.{md,json}` (`--out-dir` elsewhere). Needs the
`export` and `bench` extras (torch, onnx; openvino).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT / "tests" / "fixtures" / "reference"
RESULTS_DIR = ROOT / "benchmarks" / "results"
THREADS = 2
IMAGE_SIZE = 224
BASELINE = "onnxruntime"
PEERS = ("eager", "compile", "openvino")
CANDIDATES = (BASELINE, *PEERS)
#: A candidate whose logits differ from eager PyTorch's by more than this measured something else.
AGREEMENT_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------------
# Workers: one framework, one batch size, one process
# --------------------------------------------------------------------------------------------------
Runner = Callable[[], np.ndarray]


def _torch_model(args: argparse.Namespace):  # -> TransXNet; torch is imported in the worker only
    import torch

    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(1)
    from model import create_model

    net = create_model(args.variant, image_size=IMAGE_SIZE)
    net.load_state_dict(torch.load(args.state, weights_only=True))
    return net.eval()


def _eager(args: argparse.Namespace, images: np.ndarray) -> Runner:
    import torch

    net, x = _torch_model(args), torch.from_numpy(images)

    def run() -> np.ndarray:
        with torch.inference_mode():
            return net(x).numpy()

    return run


def _compile(args: argparse.Namespace, images: np.ndarray) -> Runner:
    import torch
    import torch._inductor.config as inductor

    inductor.freezing = args.freezing  # weights as constants: folded, pre-packed for oneDNN
    inductor.compile_threads = 1  # no compile worker pool lingering beside the measured one
    net, x = _torch_model(args), torch.from_numpy(images)
    compiled = torch.compile(net, backend="inductor")

    def run() -> np.ndarray:
        with torch.no_grad():
            return compiled(x).numpy()

    return run


def _onnxruntime(args: argparse.Namespace, images: np.ndarray) -> Runner:
    import onnxruntime as ort

    from runtime.session import session_options

    session = ort.InferenceSession(
        args.onnx, session_options(intra_op_threads=THREADS), providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: images}

    def run() -> np.ndarray:
        return session.run(None, feed)[0]  # every output is computed, as the service asks for them

    return run


def _openvino(args: argparse.Namespace, images: np.ndarray) -> Runner:
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": THREADS,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    request = ov.Core().compile_model(args.onnx, "CPU", config).create_infer_request()

    def run() -> np.ndarray:
        return request.infer({0: images})[0].copy()  # all outputs computed; logits first

    return run


RUNNERS: dict[str, Callable[[argparse.Namespace, np.ndarray], Runner]] = {
    "eager": _eager,
    "compile": _compile,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}


def _worker(args: argparse.Namespace) -> None:
    """Time `args.framework` at `args.batch`; print latencies (s), setup time and logits as JSON."""
    sys.path.insert(0, str(ROOT))
    images = np.random.default_rng(0).standard_normal(
        (args.batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32
    )
    start = time.perf_counter()
    run = RUNNERS[args.framework](args, images)
    logits = run()  # the first call pays compilation (torch.compile, OpenVINO) and is not timed
    for _ in range(args.warmup):
        run()
    setup_s = time.perf_counter() - start
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds or len(latencies) < args.min_iters:
        t0 = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - t0)
    print(json.dumps({"latencies": latencies, "setup_s": setup_s, "logits": logits.tolist()}))


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """All rounds of one (candidate, batch)."""

    candidate: str
    batch: int
    round_medians_s: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    setup_s: list[float] = field(default_factory=list)
    rel_error_vs_eager: float | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.round_medians_s)

    @property
    def p90_s(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median_s


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))


def _machine() -> dict[str, object]:
    """What the numbers were measured on; the load average says how shared the cores were."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": _cpu_name(),
        "cpu_flags": _cpu_flags(),
        "cores_visible": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "threads_per_framework": THREADS,
        "python": platform.python_version(),
        **versions,
    }


def _save_state(variant: str, random_init: bool, path: Path) -> None:
    import torch

    from model import create_model

    if random_init:
        torch.manual_seed(0)
        state = create_model(variant).state_dict()
    else:
        sys.path.insert(0, str(REFERENCE_DIR))
        from make_checkpoint import make_state_dict  # the seeded reference weights

        state = make_state_dict(variant.rsplit("_", 1)[-1], 0)
    torch.save(state, path)


def _export(variant: str, state_path: Path, path: Path) -> None:
    """The file users get: the project's whole export pipeline, verification included."""
    from export.pipeline import export_model

    result = export_model(variant, checkpoint=str(state_path), image_size=IMAGE_SIZE, output=path)
    worst = result.verification.worst if result.verification else None
    print(f"exported {path} (verified, worst {worst.rel_error if worst else float('nan'):.1e})", flush=True)


def _measure(cmd: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker failed ({' '.join(cmd[3:])}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _worker_cmd(
    args: argparse.Namespace, name: str, batch: int, state: Path, files: dict[str, str]
) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.model_bench", "--variant", args.variant, "--batch", str(batch)]
    cmd += ["--seconds", str(args.seconds), "--min-iters", str(args.min_iters), "--warmup", str(args.warmup)]
    cmd += ["--state", str(state)] + ([] if args.freezing else ["--no-freezing"])
    framework = name if name in RUNNERS else BASELINE  # extra --onnx files run on ONNX Runtime
    cmd += ["--worker", framework]
    if name in files:
        cmd += ["--onnx", files[name]]
    elif framework == "openvino":
        cmd += ["--onnx", files[BASELINE]]
    return cmd


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def _run_rounds(
    args: argparse.Namespace, candidates: list[str], state: Path, files: dict[str, str]
) -> dict[tuple[str, int], Cell]:
    cells = {(c, b): Cell(c, b) for c in candidates for b in args.batches}
    for rnd in range(args.rounds):
        order = candidates if rnd % 2 == 0 else candidates[::-1]
        for batch in args.batches:
            logits: dict[str, np.ndarray] = {}
            for name in order:
                result = _measure(_worker_cmd(args, name, batch, state, files))
                cell = cells[(name, batch)]
                cell.round_medians_s.append(statistics.median(result["latencies"]))
                cell.latencies_s.extend(result["latencies"])
                cell.setup_s.append(result["setup_s"])
                logits[name] = np.asarray(result["logits"], dtype=np.float64)
                print(
                    f"round {rnd + 1}/{args.rounds} batch {batch:>2} {name:>12}: "
                    f"{batch / cell.round_medians_s[-1]:7.2f} images/s",
                    flush=True,
                )
            _check_agreement(cells, logits, batch)
    return cells


def _check_agreement(cells: dict[tuple[str, int], Cell], logits: dict[str, np.ndarray], batch: int) -> None:
    """Record each candidate's logits error against eager PyTorch (the worst over rounds)."""
    reference = logits.get("eager")
    if reference is None:
        return
    for name, got in logits.items():
        error = _relative_error(got, reference)
        cell = cells[(name, batch)]
        cell.rel_error_vs_eager = max(error, cell.rel_error_vs_eager or 0.0)
        if error > AGREEMENT_TOLERANCE:
            print(f"WARNING: {name} at batch {batch} differs from eager by {error:.1e}", flush=True)


def _speedups(cells: dict[tuple[str, int], Cell], name: str, batch: int) -> tuple[float, float] | None:
    """ONNX Runtime's speed-up over `name`: (ratio of the medians, median of the per-round ratios)."""
    base, other = cells.get((BASELINE, batch)), cells[(name, batch)]
    if base is None:
        return None
    per_round = [o / b for o, b in zip(other.round_medians_s, base.round_medians_s, strict=True)]
    return other.median_s / base.median_s, statistics.median(per_round)


def _table(cells: dict[tuple[str, int], Cell], candidates: list[str], batches: list[int]) -> str:
    lines = [
        "| batch | candidate | images/s | latency median ms | latency p90 ms "
        "| ORT speed-up (per-round median) | logits vs eager |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch in batches:
        for name in candidates:
            cell = cells[(name, batch)]
            ratios = _speedups(cells, name, batch)
            speedup = "-" if ratios is None or name == BASELINE else f"{ratios[0]:.2f}x ({ratios[1]:.2f}x)"
            error = "-" if cell.rel_error_vs_eager is None else f"{cell.rel_error_vs_eager:.1e}"
            lines.append(
                f"| {batch} | {name} | {cell.images_per_s:.2f} | {cell.median_s * 1e3:.1f} | "
                f"{cell.p90_s * 1e3:.1f} | {speedup} | {error} |"
            )
    return "\n".join(lines)


def _write_results(
    args: argparse.Namespace, machine: dict, files: dict[str, str], cells: dict[tuple[str, int], Cell]
) -> None:
    candidates = list(dict.fromkeys(c for c, _ in cells))
    table = _table(cells, candidates, args.batches)
    print(table)
    compile_mode = "inductor, freezing on" if args.freezing else "inductor, freezing off"
    conditions = (
        f"{args.variant}, {IMAGE_SIZE}x{IMAGE_SIZE}, fp32, {THREADS} threads per framework, one fresh "
        f"process per measurement, {args.rounds} interleaved rounds of >= {args.seconds:g} s; median over "
        f"rounds of the per-round median latency; p90 over all iterations; torch.compile: {compile_mode}; "
        f"OpenVINO: CPU, f32, latency hint, 1 stream. 'ORT speed-up' is the candidate's latency over "
        f"ONNX Runtime's (> 1: ORT faster)."
    )
    load = f"{machine['load_average_start'][0]:.1f} at start / {machine['load_average_end'][0]:.1f} at end"
    versions = ", ".join(f"{p} {machine[p]}" for p in ("torch", "onnxruntime", "openvino"))
    md = [
        f"# {args.variant}: ONNX Runtime CPU against eager PyTorch, torch.compile and OpenVINO",
        "",
        conditions,
        "",
        f"Machine: {machine['cpu']} ({', '.join(machine['cpu_flags'][:6])}...), {machine['cores_visible']} "
        f"cores visible, load average {load}; {versions}. {args.note}",
        "",
        table,
        "",
    ]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"model_{args.variant.rsplit('_', 1)[-1]}"
    (args.out_dir / f"{stem}.md").write_text("\n".join(md))
    payload = {
        "conditions": conditions,
        "machine": machine,
        "note": args.note,
        "onnx_files": files,
        "cells": [
            {**asdict(c), "median_s": c.median_s, "p90_s": c.p90_s, "images_per_s": c.images_per_s}
            for c in cells.values()
        ],
    }
    (args.out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out_dir / stem}.md and .json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="transxnet_t")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    parser.add_argument("--min-iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs after the first call")
    parser.add_argument(
        "--candidates",
        default=",".join(CANDIDATES),
        help=f"comma-separated subset of {', '.join(CANDIDATES)} (default all)",
    )
    parser.add_argument(
        "--onnx",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="extra ONNX file(s) on ONNX Runtime",
    )
    parser.add_argument("--no-freezing", dest="freezing", action="store_false", help="torch.compile unfrozen")
    parser.add_argument(
        "--random-init", action="store_true", help="seeded random init, not reference weights"
    )
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. load)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    # worker mode
    parser.add_argument("--worker", dest="framework", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.framework:
        args.onnx = args.onnx[0] if args.onnx else None
        _worker(args)
        return
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = sorted(set(candidates) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    sys.path.insert(0, str(ROOT))
    machine = _machine()
    with tempfile.TemporaryDirectory() as tmp:
        state_path = Path(tmp) / "state.pt"
        _save_state(args.variant, args.random_init, state_path)
        files: dict[str, str] = {}
        if BASELINE in candidates or "openvino" in candidates:
            files[BASELINE] = str(Path(tmp) / "model.onnx")
            _export(args.variant, state_path, Path(files[BASELINE]))
        for spec in args.onnx:
            name, _, path = spec.rpartition("=")
            files[name or Path(path).stem] = str(Path(path).resolve())
            candidates.append(name or Path(path).stem)
        cells = _run_rounds(args, candidates, state_path, files)
    machine["load_average_end"] = os.getloadavg()
    _write_results(args, machine, files, cells)


if __name__ == "__main__":
    main()
