"""ONNX Runtime CPU vs this project's PyTorch eager model: same weights, images/s and latency.

Each measurement runs in its own fresh process (one framework per process, 2 intra-op threads),
candidates are interleaved within a round and the round order alternates, and every (candidate,
batch) is measured in several rounds, because on a shared machine the same run varies by 1.5x:
only medians over rounds and ratios between candidates measured together mean anything.

    python -m benchmarks.model_bench                       # export the optimised file, compare
    python -m benchmarks.model_bench --onnx base=a.onnx --onnx opt=b.onnx --rounds 5

Weights are the seeded reference checkpoint (`tests/fixtures/reference/make_checkpoint.py`,
seed 0) unless `--random-init`: realistic magnitudes (LayerScale 0.2-0.6), the same in both
frameworks. Results go to `benchmarks/results/model_<variant>.{md,json}`.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT / "tests" / "fixtures" / "reference"
RESULTS_DIR = ROOT / "benchmarks" / "results"
THREADS = 2
IMAGE_SIZE = 224


# --------------------------------------------------------------------------------------------------
# Worker: one framework, one batch size, one process
# --------------------------------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> None:
    """Time `args.framework` at `args.batch`; print the latencies (seconds) as one JSON line."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    if args.framework == "eager":
        import torch

        torch.set_num_threads(THREADS)
        sys.path.insert(0, str(ROOT))
        from model.transxnet import create_model

        net = create_model(args.variant)
        net.load_state_dict(torch.load(args.state, weights_only=True))
        x = torch.from_numpy(images)

        def run() -> None:
            with torch.inference_mode():
                net(x)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: images}

        def run() -> None:
            session.run(None, feed)

    for _ in range(args.warmup):
        run()
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds or len(latencies) < args.min_iters:
        t0 = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - t0)
    print(json.dumps({"latencies": latencies}))


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


def _machine() -> dict[str, object]:
    """What the numbers were measured on; the load average says how shared the cores were."""
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "threads_per_framework": THREADS,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _export(variant: str, state_path: Path, path: Path) -> None:
    """Export the optimised dynamic-batch file with the project's exporter (`trace_to_onnx`).

    Where the exporter's service-side imports are missing (a bare torch + onnxruntime machine),
    the same trace is made directly: `prepare_for_export`, opset 20, dynamic batch, optimize=True.
    """
    import onnx
    import torch

    from model.transxnet import create_model

    net = create_model(variant)
    net.load_state_dict(torch.load(state_path, weights_only=True))
    try:
        from export.onnx_export import trace_to_onnx
    except ImportError as exc:
        print(f"export.onnx_export unavailable ({exc}); tracing directly", flush=True)
        onnx.save(_trace_directly(net), str(path))
        return
    onnx.save(trace_to_onnx(net), str(path))


def _trace_directly(net: torch.nn.Module) -> onnx.ModelProto:
    import torch

    from export.optimize import prepare_for_export

    class Head(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            stages = self.inner.forward_features(images)
            pooled = self.inner.forward_head(stages[-1], pre_logits=True)
            return (self.inner.classifier[2](pooled[:, :, None, None]).flatten(1), pooled, *stages)

    example = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        program = torch.onnx.export(
            Head(prepare_for_export(net)).eval(),
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits", "pooled", "stage1", "stage2", "stage3", "stage4"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=20,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    return program.model_proto


def _save_state(variant: str, random_init: bool, path: Path) -> None:
    import torch

    from model.transxnet import create_model

    if random_init:
        torch.manual_seed(0)
        state = create_model(variant).state_dict()
    else:
        sys.path.insert(0, str(REFERENCE_DIR))
        from make_checkpoint import make_state_dict  # the seeded reference weights

        state = make_state_dict(variant.rsplit("_", 1)[-1], 0)
    torch.save(state, path)


def _measure(cmd: list[str]) -> list[float]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])["latencies"]


def _table(cells: dict[tuple[str, int], Cell], candidates: list[str], batches: list[int]) -> str:
    lines = [
        "| batch | candidate | images/s | latency median ms | latency p90 ms | vs eager |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for batch in batches:
        eager = cells.get(("eager", batch))
        for name in candidates:
            cell = cells[(name, batch)]
            ratio = f"{cell.images_per_s / eager.images_per_s:.2f}x" if eager else "-"
            lines.append(
                f"| {batch} | {name} | {cell.images_per_s:.2f} | {cell.median_s * 1e3:.1f} | "
                f"{cell.p90_s * 1e3:.1f} | {ratio} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="transxnet_t")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    parser.add_argument("--min-iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--onnx", action="append", default=[], metavar="[NAME=]PATH", help="ONNX file(s) to compare"
    )
    parser.add_argument("--no-eager", action="store_true", help="skip the PyTorch eager baseline")
    parser.add_argument(
        "--random-init", action="store_true", help="seeded random init, not reference weights"
    )
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. load)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    # worker mode
    parser.add_argument("--worker", dest="framework", choices=["eager", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.framework:
        if args.framework == "ort":
            args.onnx = args.onnx[0]
        _worker(args)
        return

    sys.path.insert(0, str(ROOT))
    machine = _machine()
    with tempfile.TemporaryDirectory() as tmp:
        state_path = Path(tmp) / "state.pt"
        _save_state(args.variant, args.random_init, state_path)
        files: dict[str, str] = {}
        for spec in args.onnx:
            name, _, path = spec.rpartition("=")
            files[name or Path(path).stem] = str(Path(path).resolve())
        if not files:
            path = Path(tmp) / "model.onnx"
            print(f"exporting {args.variant} with export.onnx_export.trace_to_onnx ...", flush=True)
            _export(args.variant, state_path, path)
            files["onnxruntime"] = str(path)
        candidates = ([] if args.no_eager else ["eager"]) + list(files)
        cells = {(c, b): Cell(c, b) for c in candidates for b in args.batches}
        common = [sys.executable, "-m", "benchmarks.model_bench", "--variant", args.variant]
        common += ["--seconds", str(args.seconds), "--min-iters", str(args.min_iters)]
        common += ["--warmup", str(args.warmup)]
        for rnd in range(args.rounds):
            order = candidates if rnd % 2 == 0 else candidates[::-1]
            for batch in args.batches:
                for name in order:
                    cmd = [*common, "--batch", str(batch)]
                    if name == "eager":
                        cmd += ["--worker", "eager", "--state", str(state_path)]
                    else:
                        cmd += ["--worker", "ort", "--onnx", files[name]]
                    lat = _measure(cmd)
                    cell = cells[(name, batch)]
                    cell.round_medians_s.append(statistics.median(lat))
                    cell.latencies_s.extend(lat)
                    print(
                        f"round {rnd + 1}/{args.rounds} batch {batch:>2} {name:>12}: "
                        f"{batch / statistics.median(lat):7.2f} images/s",
                        flush=True,
                    )
    machine["load_average_end"] = os.getloadavg()
    table = _table(cells, candidates, args.batches)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"model_{args.variant.rsplit('_', 1)[-1]}"
    conditions = (
        f"{args.variant}, {IMAGE_SIZE}x{IMAGE_SIZE}, fp32, {THREADS} threads per framework, one process per "
        f"measurement, {args.rounds} interleaved rounds of >= {args.seconds:g} s; median over rounds of the "
        f"per-round median latency; p90 over all iterations."
    )
    md = [
        f"# {args.variant}: ONNX Runtime CPU vs PyTorch eager",
        "",
        conditions,
        "",
        f"Machine: {machine['cpu']}, {machine['cores_visible']} cores visible, load average "
        f"{machine['load_average_start'][0]:.1f} at start / {machine['load_average_end'][0]:.1f} at end; "
        f"torch {machine['torch']}, onnxruntime {machine['onnxruntime']}. {args.note}",
        "",
        table,
        "",
    ]
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


if __name__ == "__main__":
    main()
