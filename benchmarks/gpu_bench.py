"""GPU checks and model benchmark (run only where a CUDA GPU and onnxruntime-gpu are present).

1. Exports TransXNet-T (the seeded reference checkpoint, so the official outputs are known) to fp32 and
   fp16 ONNX files, and verifies them on each GPU execution provider (CUDA, TensorRT) against PyTorch.
2. Times ONNX Runtime (CUDA EP; TensorRT EP where it initialises) against PyTorch eager on the GPU,
   fp32 and fp16, at batch 1, 8, 32 and 128: images/s and median latency, host<->device copies
   included for ONNX Runtime (`session.run` on numpy, as the service calls it).

    python benchmarks/gpu_bench.py --out benchmarks/results

Writes `gpu_model.json` and `gpu_model.md` under --out. Each framework is timed in its own process
(`--only`), so neither's allocator or streams disturb the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCHES = (1, 8, 32, 128)


def _time(fn, batch: int, seconds: float = 3.0) -> dict[str, float]:
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 10:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {"batch": batch, "images_per_s": batch / med, "median_ms": med * 1e3, "runs": len(times)}


def bench_ort(path: str, provider: str) -> list[dict]:
    from runtime.session import create_session

    loaded = create_session(path, providers=provider, max_batch_size=max(BATCHES), image_size=224)
    rows = []
    for b in BATCHES:
        x = np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32)
        rows.append(_time(lambda x=x: loaded.session.run(["logits"], {"images": x}), b))
    return rows


def bench_torch(dtype: str) -> list[dict]:
    import torch

    from model import create_model

    torch.backends.cudnn.benchmark = True
    net = create_model("t").cuda()
    if dtype == "fp16":
        net = net.half()
    rows = []
    for b in BATCHES:
        x = torch.randn(
            b, 3, 224, 224, device="cuda", dtype=torch.float16 if dtype == "fp16" else torch.float32
        )

        def run(x=x) -> None:
            with torch.inference_mode():
                net(x)
            torch.cuda.synchronize()

        rows.append(_time(run, b))
    return rows


def child(args: argparse.Namespace) -> None:
    kind, _, rest = args.only.partition(":")
    rows = bench_torch(rest) if kind == "torch" else bench_ort(args.model, rest)
    print("RESULT " + json.dumps(rows))


def run_child(only: str, model: str | None = None) -> list[dict] | str:
    cmd = [sys.executable, __file__, "--only", only] + (["--model", model] if model else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return (
        (proc.stderr or proc.stdout).strip().splitlines()[-1] if (proc.stderr or proc.stdout) else "no output"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default="/tmp/gpu_bench")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        child(args)
        return

    import onnx
    import torch

    from export.onnx_export import convert_to_fp16
    from export.pipeline import export_model
    from export.verify import verify_onnx
    from model import create_model
    from runtime.session import ProviderUnavailableError

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "reference"))
    import make_checkpoint

    ckpt = work / "transx-t-reference.pth.tar"
    torch.save({"state_dict": make_checkpoint.make_state_dict("t", 0)}, ckpt)
    expected = ROOT / "tests" / "fixtures" / "reference" / "expected_t.npz"
    t0 = time.perf_counter()
    fp32 = export_model("t", checkpoint=str(ckpt), output=work / "t.onnx", expected=expected).path
    export_s = time.perf_counter() - t0
    fp16 = work / "t_fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(fp32))), str(fp16))
    net = create_model("t", checkpoint=ckpt)
    ref = dict(np.load(expected))
    verification: dict[str, object] = {}
    for provider in ("cuda", "tensorrt"):
        for name, path, half in (("fp32", fp32, False), ("fp16", fp16, True)):
            key = f"{provider}/{name}"
            try:
                report = verify_onnx(
                    path, net, providers=provider, fp16=half, expected=ref, raise_on_failure=False
                )
                worst = report.worst
                verification[key] = {
                    "ok": report.ok,
                    "providers": list(report.providers),
                    "worst": f"{worst.output} b{worst.batch_size} {worst.rel_error:.2e}" if worst else None,
                }
            except ProviderUnavailableError as exc:
                verification[key] = {"ok": None, "unavailable": exc.reason}
            print(key, verification[key], flush=True)

    results: dict[str, object] = {}
    for only, model in (
        ("torch:fp32", None),
        ("torch:fp16", None),
        ("ort:cuda", str(fp32)),
        ("ort-fp16:cuda", str(fp16)),
        ("ort:tensorrt", str(fp32)),
    ):
        label = only.replace("ort-fp16", "ort fp16")
        kind = "ort" if only.startswith("ort") else "torch"
        results[label] = run_child(f"{kind}:{only.split(':')[1]}", model)
        print(label, results[label], flush=True)

    gpu = torch.cuda.get_device_name(0)
    import onnxruntime as ort

    meta = {
        "gpu": gpu,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cpu_count": os.cpu_count(),
        "export_s": export_s,
        "note": "ORT timings include host<->device copies (session.run on numpy arrays).",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_model.json").write_text(
        json.dumps({"meta": meta, "verification": verification, "results": results}, indent=2)
    )
    lines = [
        f"# GPU model benchmark: TransXNet-T, 224x224, {gpu}",
        "",
        f"torch {meta['torch']}, onnxruntime {meta['onnxruntime']}. {meta['note']}",
        "",
    ]
    lines += [
        "| engine | " + " | ".join(f"b{b} img/s (ms)" for b in BATCHES) + " |",
        "|---" * (len(BATCHES) + 1) + "|",
    ]
    for label, rows in results.items():
        if isinstance(rows, list):
            cells = [f"{r['images_per_s']:.0f} ({r['median_ms']:.2f})" for r in rows]
        else:
            cells = [f"unavailable: {rows[:60]}"] + [""] * (len(BATCHES) - 1)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Verification on GPU providers (vs PyTorch on the CPU, batch 1/3/8, plus the official outputs):",
        "",
    ]
    for key, v in verification.items():
        lines.append(f"- {key}: {v}")
    (out / "gpu_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
