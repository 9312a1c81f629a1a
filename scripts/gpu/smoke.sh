#!/usr/bin/env bash
# Runs the GPU measurement here, on the CPU (`measure.sh --smoke`: CPU provider, batch 1-2, one-second
# service levels), then checks that every stage ran and left its results, so the device call does not
# die on a bug. Numbers from it mean nothing.
#   bash scripts/gpu/smoke.sh                    with .venv's python (~10-20 min on 2 busy cores)
#   GPU_PYTHON=/path/python GPU_SITE_PY=/path/site bash scripts/gpu/smoke.sh
#                                                e.g. a Python 3.12 + torch 2.11 venv like the GPU machine's,
#                                                with .gpu/whl installed into GPU_SITE_PY by `pip --target`
#   GPU_MODELS_DIR=DIR ...                       reuse t.onnx and t_fp16.onnx from DIR (skips ~2 min of export)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
export GPU_PYTHON=${GPU_PYTHON:-$(pwd)/.venv/bin/python}
export OUT=${OUT:-/tmp/gpu_smoke/out} GPU_WORK=${GPU_WORK:-/tmp/gpu_smoke/work}
# max-autotune on the CPU takes ~10 min for this model (checked once: it compiles and runs); the
# smoke run compiles with Inductor's default mode unless told otherwise.
export GPU_COMPILE_MODE=${GPU_COMPILE_MODE:-default}
rm -rf "$OUT" && mkdir -p "$OUT" "$GPU_WORK"
rm -f "$GPU_WORK/exports.done" "$GPU_WORK/prework.pid"
bash scripts/gpu/measure.sh --smoke
"$GPU_PYTHON" - "$OUT/results.json" <<'EOF'
import json, sys

data = json.load(open(sys.argv[1]))
problems = []
for stage in ("setup", "parity", "ort", "eager", "compile", "service"):
    rc = data.get("stage_rc", {}).get(stage)
    if rc != 0:
        problems.append(f"stage {stage}: rc {rc}")
checks = {
    "parity verdicts": data.get("parity", {}).get("verdicts"),
    "ORT fp32 rows": data.get("ort_throughput", {}).get("fp32_plain", {}).get("1"),
    "ORT graph-mode rows": data.get("ort_throughput", {}).get("fp16_cuda_graph", {}).get("1"),
    "eager rows": data.get("torch_eager", {}).get("fp32", {}).get("1"),
    "eager dispatch analysis": data.get("eager_analysis", {}).get("fp32", {}).get("1", {}).get("dispatch"),
    "compile row": data.get("torch_compile", {}).get("fp32", {}).get("1"),
    "service levels": data.get("service", {}).get("configs", {}).get("defaults", {}).get("levels"),
}
problems += [f"missing: {name}" for name, value in checks.items() if not value]
if data.get("parity", {}).get("verdicts") and not all(data["parity"]["verdicts"].values()):
    problems.append(f"parity failed: {data['parity']['verdicts']}")
compile_row = checks["compile row"] or {}
if "error" in compile_row:
    problems.append(f"torch.compile: {compile_row['error'][:300]}")
print("smoke check:", "all stages ran" if not problems else "; ".join(problems))
sys.exit(1 if problems else 0)
EOF
