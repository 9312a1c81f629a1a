#!/usr/bin/env bash
# The whole GPU measurement of issue 18 in one device call (the 5th; docs/gpu.md lists all five):
#   bash scripts/gpu/measure.sh 3        on the GPU machine, carrying .gpu/part3 (the last part)
#   bash scripts/gpu/measure.sh --smoke  here, on the CPU: CPU provider, batch 1-2, one-second levels
#
# Stages, each under its own time limit (cut so the later stages keep their minimum), each writing
# into $OUT/results.json point by point, with $OUT/gpu_report.md re-rendered after every stage, so a
# stage or the whole call killed at its limit still returns what it measured:
#   setup     reassemble onnxruntime-gpu into /tmp/site, LD_LIBRARY_PATH to torch's CUDA 13 libraries,
#             versions, and a one-node probe that the CUDA provider initialises
#   models    the fp32 and fp16 exports (made in the background by prework.sh; made here if not)
#   parity    CUDA provider vs CPU ORT and the official outputs, batch 1/8/64
#   ort       ORT CUDA throughput, batch 1..256, fp16/fp32, with and without CUDA graphs
#   eager     torch eager throughput and the account of its 40-60 ms forward (profiler trace kept)
#   compile   torch.compile(max-autotune) at batch 64/256/1/8/128 (Inductor cache warmed by prework)
#   service   `python -m app` on CUDA under closed-loop JPEG load, concurrency 1..256, settings sweep
# Files back (at most 8): measure.log, results.json, gpu_report.md, prework.log, eager_trace.json.gz.
set -uo pipefail
repo=$(pwd)
smoke=0
part=
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  *) part=$1 ;;
esac
out=${OUT:-/tmp/gpu_out}
work=${GPU_WORK:-/tmp/gpu_work}
py=${GPU_PYTHON:-python3}
mkdir -p "$out" "$work"
exec > >(tee -a "$out/measure.log") 2>&1
command -v "$py" >/dev/null || { echo "no python at $py (set GPU_PYTHON)"; exit 2; }
results=$out/results.json
started=$(date +%s)
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$work/inductor
flags=()
if [[ $smoke == 1 ]]; then
  flags=(--smoke)
  total=${GPU_TOTAL_S:-3000}
  # On 2 shared cores the CPU stand-ins are slow; the budgets only keep the smoke run bounded.
  declare -A nominal=([parity]=200 [ort]=300 [eager]=400 [compile]=900 [service]=300)
else
  total=${GPU_TOTAL_S:-480}
  declare -A nominal=([parity]=50 [ort]=120 [eager]=45 [compile]=60 [service]=130)
fi
declare -A minimum=([parity]=25 [ort]=50 [eager]=20 [compile]=25 [service]=60)
order=(parity ort eager compile service)

elapsed() { echo $(($(date +%s) - started)); }
put() {  # put '["key", ...]' JSON_VALUE
  "$py" -c "import json, sys; sys.path.insert(0, '$repo'); from benchmarks.gpu_common import ResultsFile
ResultsFile('$results').put(json.loads(sys.argv[1]), json.loads(sys.argv[2]))" "$1" "$2" || true
}
budget() {  # budget STAGE: its nominal seconds, cut so every later stage keeps its minimum
  local stage=$1 reserve=0 later=0 s
  for s in "${order[@]}"; do
    [[ $later == 1 ]] && reserve=$((reserve + minimum[$s]))
    [[ $s == "$stage" ]] && later=1
  done
  local left=$((total - $(elapsed) - reserve))
  local b=${nominal[$stage]}
  ((left < b)) && b=$left
  ((b < 5)) && b=5
  echo "$b"
}
render() { "$py" -m benchmarks.gpu_report --results "$results" --out "$out" --stem gpu_report --no-json >/dev/null 2>&1 || true; }
run_stage() {  # run_stage NAME SECONDS COMMAND...
  local name=$1 secs=$2
  shift 2
  echo "=== $name: budget ${secs}s, $(elapsed)s into the run"
  local t=$(date +%s)
  timeout -k 10 "$secs" "$@"
  local rc=$?
  echo "=== $name: rc=$rc after $(($(date +%s) - t))s"
  put "[\"stage_rc\", \"$name\"]" "$rc"
  render
  return $rc
}

# ------------------------------------------------------------------------------------------ setup
setup_device() {
  if [[ -n $part ]]; then
    mkdir -p /tmp/ortgpu && cp ".gpu/part$part" /tmp/ortgpu/ || echo "WARNING: no .gpu/part$part carried"
  fi
  [[ -f .gpu/parts.sha256 && ! -f /tmp/ortgpu/parts.sha256 ]] && cp .gpu/parts.sha256 /tmp/ortgpu/
  if [[ ! -f /tmp/site/onnxruntime/__init__.py ]]; then
    if ! (cd /tmp/ortgpu && sha256sum -c parts.sha256); then
      echo "onnxruntime-gpu parts missing or damaged in /tmp/ortgpu (the machine went back between calls?):"
      ls -la /tmp/ortgpu
      put '["setup_error"]' '"onnxruntime-gpu parts missing: redo the staging calls"'
      return 2
    fi
    mkdir -p /tmp/site && cat /tmp/ortgpu/part[0-9] | xz -d -T0 | tar -x -C /tmp/site || return 2
  fi
  if [[ ! -d /tmp/site_py/fastapi && -d .gpu/whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_py .gpu/whl/*.whl
  fi
  export PYTHONPATH="/tmp/site:/tmp/site_py:$repo"
  # ORT's CUDA provider dlopens libcudart/libcublas/libcudnn (CUDA 13): take them from torch's wheels.
  local libs
  libs=$(python3 -c "import os, nvidia; print(':'.join(sorted({os.path.join(p, d, 'lib') for p in nvidia.__path__ for d in os.listdir(p) if os.path.isdir(os.path.join(p, d, 'lib'))})))")
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.used,temperature.gpu,clocks.sm,clocks.max.sm --format=csv,noheader
}

if [[ $smoke == 1 ]]; then
  export PYTHONPATH="${GPU_SITE_PY:+$GPU_SITE_PY:}$repo"
else
  setup_device || { render; exit 2; }
fi
echo "=== setup done after $(elapsed)s: PYTHONPATH=$PYTHONPATH"
"$py" -m benchmarks.gpu_env --results "$results" "${flags[@]}"
put '["stage_rc", "setup"]' "$?"

# ----------------------------------------------------------------------------------------- models
prework_running() { [[ -f $work/prework.pid ]] && kill -0 "$(cat "$work/prework.pid")" 2>/dev/null; }
if [[ -n ${GPU_MODELS_DIR:-} ]]; then  # smoke runs may reuse exports made earlier
  cp -n "$GPU_MODELS_DIR/t.onnx" "$GPU_MODELS_DIR/t_fp16.onnx" "$work/" 2>/dev/null || true
fi
waited=0
while [[ ! -f $work/exports.done ]] && prework_running && ((waited < ${GPU_EXPORT_WAIT_S:-150})); do
  sleep 2
  waited=$((waited + 2))
done
if [[ ! -s $work/t.onnx || ! -s $work/t_fp16.onnx ]]; then
  echo "=== models: exporting now (prework did not leave both files)"
  timeout -k 5 "${GPU_EXPORT_S:-240}" bash scripts/gpu/export_models.sh "$work" "$py"
fi
put '["models"]' "$("$py" -c "import json, os; print(json.dumps({n: os.path.getsize('$work/' + n) if os.path.exists('$work/' + n) else None for n in ('t.onnx', 't_fp16.onnx')} | {'exports_done': open('$work/exports.done').read().strip() if os.path.exists('$work/exports.done') else None, 'waited_s': $waited}))")"
for name in fp32 fp16; do
  [[ -f $work/export_$name.log ]] && put "[\"export_log_tail\", \"$name\"]" "$("$py" -c "import json, sys; print(json.dumps(open(sys.argv[1]).read()[-1500:]))" "$work/export_$name.log")"
done
if [[ ! -s $work/t.onnx || ! -s $work/t_fp16.onnx ]]; then
  echo "=== models: MISSING; the ONNX Runtime and service stages cannot run"
fi
models=(--fp32 "$work/t.onnx" --fp16 "$work/t_fp16.onnx")

# ------------------------------------------------------------------------------------------ stages
b=$(budget parity)
run_stage parity "$b" "$py" -m benchmarks.gpu_ort parity "${models[@]}" --results "$results" --budget $((b - 8)) "${flags[@]}"

# The compile warm-up must not share the GPU with the timed stages: give it a last moment, then stop it.
for _ in $(seq 1 "${GPU_WARM_WAIT_S:-15}"); do prework_running || break; sleep 1; done
if prework_running; then
  echo "=== stopping the torch.compile warm-up (prework) before the timed stages"
  kill -TERM -- "-$(cat "$work/prework.pid")" 2>/dev/null || kill -TERM "$(cat "$work/prework.pid")" 2>/dev/null
  sleep 2
fi
if [[ -f $work/prework.json ]]; then
  put '["prework"]' "$(cat "$work/prework.json")"
fi
[[ -f $work/prework.log ]] && cp "$work/prework.log" "$out/prework.log"

b=$(budget ort)
run_stage ort "$b" "$py" -m benchmarks.gpu_ort throughput "${models[@]}" --results "$results" --budget $((b - 10)) \
  "${flags[@]}"
b=$(budget eager)
run_stage eager "$b" "$py" -m benchmarks.gpu_torch eager --results "$results" --work "$work" \
  --trace "$out/eager_trace.json.gz" --budget $((b - 8)) "${flags[@]}"
b=$(budget compile)
run_stage compile "$b" "$py" -m benchmarks.gpu_torch compile --results "$results" --work "$work" \
  --mode "${GPU_COMPILE_MODE:-max-autotune}" --prework "$work/prework.json" --budget $((b - 8)) "${flags[@]}"
b=$(budget service)
run_stage service "$b" "$py" -m benchmarks.gpu_service --model "$work/t.onnx" --fp16-model "$work/t_fp16.onnx" \
  --results "$results" --budget $((b - 12)) "${flags[@]}"

render
echo "=== done after $(elapsed)s; files in $out:"
ls -la "$out"
tail -n 60 "$out/gpu_report.md" 2>/dev/null
