#!/usr/bin/env bash
# Runs on the GPU machine in the background while the staging calls carry onnxruntime-gpu's parts
# (started by `stage.sh 4 --start`, in its own session so it outlives that call): the two exports on
# the device's torch, then torch.compile(max-autotune) with nothing timed, to fill the Inductor cache
# that the measuring call's compile stage then loads. Every step has its own time limit.
#   bash /tmp/gpu_repo/scripts/gpu/prework.sh      (from a snapshot of the repository)
set -uo pipefail
cd "$(dirname "$0")/../.."
work=${GPU_WORK:-/tmp/gpu_work}
mkdir -p "$work"
export PYTHONPATH="${GPU_SITE_PY:-/tmp/site_py}:$(pwd)"
export TORCHINDUCTOR_CACHE_DIR=$work/inductor PYTHONUNBUFFERED=1
echo "prework: exports ($(date +%T))"
timeout -k 5 "${PREWORK_EXPORT_S:-150}" bash scripts/gpu/export_models.sh "$work" python3
echo "prework: torch.compile warm-up ($(date +%T))"
timeout -k 5 "${PREWORK_COMPILE_S:-330}" python3 -m benchmarks.gpu_torch compile --warm-only \
  --results "$work/prework.json" --work "$work" --budget "$(( ${PREWORK_COMPILE_S:-330} - 15 ))"
echo "prework: done rc=$? ($(date +%T))" | tee "$work/prework.done"
